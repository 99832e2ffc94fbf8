"""``freshline pipeline up|status|down``: the stream pipeline as a Ray job on the stack's head.

``up`` submits ``python -m actors.job up`` with ``ray job submit --working-dir`` exactly as one
would on a remote cluster, passing the ``FRESHLINE_*`` settings through the job's runtime env.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from cluster.settings import StackSettings
from features.errors import StackError

REPO_ROOT = Path(__file__).resolve().parent.parent


def submit(settings: StackSettings, verb: str, consumers: int = 2) -> str:
    """Run ``python -m actors.job <verb>`` as a Ray job and return its output."""
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("FRESHLINE_")}
    env_vars["FRESHLINE_STATE_DIR"] = str(settings.state_dir)
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
        "actors.job",
        verb,
        "--consumers",
        str(consumers),
    ]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise StackError(f"pipeline {verb} failed: {(result.stdout + result.stderr)[-2000:]}")
    return result.stdout


def status(settings: StackSettings) -> dict[str, Any] | None:
    """The supervisor's status, or None when no pipeline runs on this stack's head."""
    import ray

    from actors import job

    ray.init(address=settings.ray.address, namespace="freshline", log_to_driver=False)
    try:
        return job.status()
    finally:
        ray.shutdown()
