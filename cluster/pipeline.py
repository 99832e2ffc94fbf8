"""``freshline pipeline up|status|down``: the stream pipeline as one long-running Ray job.

``up`` submits ``python -m cluster.pipeline_job run`` with its working directory, exactly as
``ray job submit --working-dir . -- python -m cluster.pipeline_job run`` would on a remote
cluster, and returns once the job's driver logs that every consumer has restored its state. The
job stays RUNNING for the pipeline's whole life: ``ray job list`` shows it, ``ray job logs -f``
follows its status lines, and ``down`` (or ``ray job stop``) drains it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from actors.config import DEFAULT_CONSUMERS, DEFAULT_OFFLINE_WRITERS, DEFAULT_SINK_SHARDS
from cluster.settings import StackSettings
from cluster.settings_env import settings_to_env
from features.errors import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent

# The driver prints this line once every consumer has restored (cluster/pipeline_job.py).
READY_LINE = "freshline pipeline ready"
ENTRYPOINT = "python -m cluster.pipeline_job run"
# Seconds Ray waits after SIGTERM before it SIGKILLs the driver: enough to drain every actor
# (each stop is bounded by 30 s in actors/runtime.py, consumers first, in parallel groups).
DRAIN_S = 180
_AGENT_NOT_READY = "No available agent to submit job"
_LIVE = ("PENDING", "RUNNING")


def client(settings: StackSettings) -> Any:
    from ray.job_submission import JobSubmissionClient

    os.environ.update(settings.ray.client_env())  # the client reads the auth mode from here
    return JobSubmissionClient(settings.ray.dashboard_url)


def running(client: Any) -> list[str]:
    """Submission ids of pipeline jobs that are pending or running on this head."""
    return [
        str(job.submission_id)
        for job in client.list_jobs()
        if job.entrypoint.startswith(ENTRYPOINT) and _status_name(job.status) in _LIVE
    ]


def up(
    settings: StackSettings,
    consumers: int = DEFAULT_CONSUMERS,
    timeout_s: float = 300.0,
    *,
    sink_shards: int = DEFAULT_SINK_SHARDS,
    offline_writers: int = DEFAULT_OFFLINE_WRITERS,
) -> str:
    """Submit the pipeline job (unless one runs already) and wait until it reports ready.

    Ray answers "No available agent to submit job" while the head's job agent is still starting
    (seconds after the dashboard answers, longer under load); that one error is retried until
    ``timeout_s``. A job that ends before it is ready raises with the tail of its log.
    """
    jobs_api = client(settings)
    deadline = time.monotonic() + timeout_s
    live = running(jobs_api)
    entrypoint = (
        f"{ENTRYPOINT} --consumers {consumers} --sink-shards {sink_shards}"
        f" --offline-writers {offline_writers}"
    )
    job_id = live[0] if live else _submit(jobs_api, settings, entrypoint, deadline)
    while True:
        status = _status_name(jobs_api.get_job_status(job_id))
        logs = jobs_api.get_job_logs(job_id)
        if READY_LINE in logs:
            return job_id
        if status not in _LIVE:
            raise StackError(f"pipeline job {job_id} ended {status} before ready: {logs[-2000:]}")
        if time.monotonic() > deadline:
            raise StackError(
                f"pipeline job {job_id} not ready in {timeout_s:.0f} s: {logs[-2000:]}"
            )
        time.sleep(1.0)


def _submit(client: Any, settings: StackSettings, entrypoint: str, deadline: float) -> str:
    runtime_env = {
        "working_dir": str(REPO_ROOT),
        "env_vars": {**settings_to_env(settings), "RAY_JOB_STOP_WAIT_TIME_S": str(DRAIN_S)},
    }
    while True:
        try:
            return str(client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env))
        except RuntimeError as exc:
            if _AGENT_NOT_READY not in str(exc) or time.monotonic() > deadline:
                raise StackError(f"submitting the pipeline job failed: {exc}") from exc
            time.sleep(2.0)


def down(settings: StackSettings, timeout_s: float = DRAIN_S + 60.0) -> list[str]:
    """Stop every pipeline job on this head (Ray sends SIGTERM; the driver drains) and wait
    until each has ended; returns their submission ids."""
    jobs_api = client(settings)
    jobs = running(jobs_api)
    for job_id in jobs:
        jobs_api.stop_job(job_id)
    deadline = time.monotonic() + timeout_s
    for job_id in jobs:
        while _status_name(jobs_api.get_job_status(job_id)) in _LIVE:
            if time.monotonic() > deadline:
                raise StackError(f"pipeline job {job_id} did not stop within {timeout_s:.0f} s")
            time.sleep(1.0)
    return jobs


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status))


def status(settings: StackSettings) -> dict[str, Any] | None:
    """The supervisor's status, or None when no pipeline runs on this stack's head."""
    import ray

    from actors import job
    from actors.runtime import NAMESPACE

    os.environ.update(settings.ray.client_env())  # read by ray.init in this process
    ray.init(address=settings.ray.address, namespace=NAMESPACE, log_to_driver=False)
    try:
        return job.status()
    finally:
        ray.shutdown()
