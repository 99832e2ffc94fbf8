"""``freshline serve up|down``: the per-region Serve applications on the stack's Ray head.

The local API key is generated once into ``$FRESHLINE_STATE_DIR/serving_api_key`` (mode 0600); the
applications store only its hash. It gets the read and admin scopes: it is the operator's key.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from cluster.settings import StackSettings
from regions.aws import LOCAL_CREDENTIALS


def api_key_file(settings: StackSettings) -> Path:
    return settings.state_dir / "serving_api_key"


def load_or_create_api_key(settings: StackSettings) -> str:
    path = api_key_file(settings)
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = "fl_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def serve_up(settings: StackSettings) -> list[str]:
    """Deploy (idempotently) one application per region; returns their base URLs."""
    import ray

    from serve_apps.config import ApiKey, Scope
    from serve_apps.deploy import configs_for_stack, deploy

    key = ApiKey.from_raw("local", load_or_create_api_key(settings), frozenset(Scope))
    credentials = (
        LOCAL_CREDENTIALS["aws_access_key_id"],
        LOCAL_CREDENTIALS["aws_secret_access_key"],
    )
    configs = configs_for_stack(settings, [key], dynamodb_credentials=credentials)
    os.environ.update(settings.ray.client_env())  # read by ray.init in this process
    try:
        prefixes = deploy(
            configs, ray_address=settings.ray.address, http_port=settings.ray.serve_port
        )
    finally:
        ray.shutdown()
    return [f"http://127.0.0.1:{settings.ray.serve_port}{prefix}" for prefix in prefixes]


def serve_down(settings: StackSettings) -> None:
    import ray

    from serve_apps.deploy import undeploy

    os.environ.update(settings.ray.client_env())
    ray.init(address=settings.ray.address, namespace="serve", log_to_driver=False)
    try:
        undeploy(settings.topology.names)
    finally:
        ray.shutdown()
