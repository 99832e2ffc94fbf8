"""``freshline pipeline up|status|down``: the stream pipeline as a Ray job on the stack's head.

``up`` submits ``python -m cluster.pipeline_job up`` with ``ray job submit --working-dir`` exactly
as one would on a remote cluster, passing the ``FRESHLINE_*`` settings through the job's runtime
env.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from actors.config import DEFAULT_CONSUMERS
from cluster.settings import StackSettings
from features.errors import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent


def submit(
    settings: StackSettings,
    verb: str,
    consumers: int = DEFAULT_CONSUMERS,
    timeout_s: float = 180.0,
) -> str:
    """Run ``python -m cluster.pipeline_job <verb>`` as a Ray job and return its output.

    Ray answers "No available agent to submit job, please try again later" while the head's job
    agent is still starting (seconds after the dashboard answers, longer under load); that one
    error is retried until ``timeout_s``, every other failure is raised at once.
    """
    env_vars = settings.to_env()
    argv = [
        str(Path(sys.executable).parent / "ray"),
        "job",
        "submit",
        "--address",
        settings.ray.dashboard_url,
        "--working-dir",
        str(REPO_ROOT),
        "--runtime-env-json",
        json.dumps({"env_vars": env_vars}),
        "--",
        "python",
        "-m",
        "cluster.pipeline_job",
        verb,
        "--consumers",
        str(consumers),
    ]
    env = {**os.environ, **settings.ray.client_env()}
    deadline = time.monotonic() + timeout_s
    while True:
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, check=False, env=env
        )
        output = result.stdout + result.stderr
        if result.returncode == 0:
            return result.stdout
        if _AGENT_NOT_READY not in output or time.monotonic() > deadline:
            raise StackError(f"pipeline {verb} failed: {output[-2000:]}")
        time.sleep(2.0)


_AGENT_NOT_READY = "No available agent to submit job"


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
