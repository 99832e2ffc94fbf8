"""The per-region Serve applications on the stack's Ray head: ``freshline serve up|down`` and
the ``serving`` service that ``Stack.up`` starts after the head when ``settings.with_serving``.

The local API key is generated once into ``$FRESHLINE_STATE_DIR/serving_api_key`` (mode 0600); the
applications store only its hash. It gets the read and admin scopes: it is the operator's key.
"""

from __future__ import annotations

import os
import secrets
import urllib.request
from pathlib import Path

from actors.registry_feed import latest
from cluster.process import ManagedProcess
from cluster.services.base import Port, ServiceStatus, status_without_process, wait_ready
from cluster.services.ray_head import head_process
from cluster.settings import StackSettings
from features.demo import item_embedding_views
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
    # The latest applied registry version, as the pipeline computes it; else the demo catalog.
    current = latest(settings.kafka.bootstrap, settings.tenant)
    configs = configs_for_stack(
        settings,
        [key],
        dynamodb_credentials=credentials,
        replicas=settings.ray.serve_replicas,
        catalog_inline=None if current is None else current.catalog.model_dump(mode="json"),
        registry_version=None if current is None else current.number,
    )
    os.environ.update(settings.ray.client_env())  # read by ray.init in this process
    try:
        prefixes = deploy(
            configs,
            ray_address=settings.ray.address,
            http_port=settings.ray.serve_port,
            # The views the pipeline starts index actors for (cluster/pipeline_job.py).
            embeddings=item_embedding_views(),
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


def base_urls(settings: StackSettings) -> list[str]:
    port = settings.ray.serve_port
    return [f"http://127.0.0.1:{port}/{name}" for name in settings.topology.names]


class ServingService:
    """The region applications as a stack service. They are Serve actors on the Ray head, so they
    have no process of their own: ``stop`` is a no-op that reports whether they were up, and the
    head's stop (which follows in ``Stack.down``'s reverse order) ends them. ``start`` is
    idempotent: it deploys only when some region does not answer ``/v1/health``.

    They count as this state dir's only when its own head is alive: apps answering on the Serve
    port of a head it did not start are another stack's (``foreign``). Healthy also needs the
    operator key file, without which nobody can call them."""

    name = "serving"

    def __init__(self, settings: StackSettings, head: ManagedProcess | None = None) -> None:
        self._settings = settings
        self._head = head if head is not None else head_process(settings)

    def status(self) -> ServiceStatus:
        urls = ", ".join(base_urls(self._settings))
        if self._head.pid() is None:
            port = Port("ray serve", "127.0.0.1", self._settings.ray.serve_port)
            return status_without_process(self.name, "serve", urls, [port])
        error = self._probe()
        key = api_key_file(self._settings)
        if error is None and not key.exists():
            error = f"the apps answer, but the API key file {key} is missing (`freshline serve up`)"
        if error is not None:
            return ServiceStatus(self.name, "serve", urls, None, "unhealthy", error)
        return ServiceStatus(self.name, "serve", urls, None, "healthy", f"key in {key}")

    def start(self) -> None:
        if self._probe() is None:
            return
        serve_up(self._settings)
        log = self._settings.log_dir / "serving.log"
        wait_ready(self.name, self._probe, 60.0, log)

    def stop(self, *, graceful: bool = True) -> bool:
        return self._probe() is None

    def purge(self) -> None:
        """The API key stays in the state dir, which ``stack down --purge`` keeps."""

    def _probe(self) -> str | None:
        for url in base_urls(self._settings):
            try:
                with urllib.request.urlopen(  # noqa: S310 - a fixed http://127.0.0.1 URL
                    f"{url}/v1/health", timeout=2.0
                ) as response:
                    if response.status != 200:
                        return f"{url}: HTTP {response.status}"
            except Exception as exc:
                return f"{url}: {type(exc).__name__}"
        return None
