"""Deploying every region's application: from Python (:func:`deploy`) or as a Serve config file
(:func:`write_serve_config`, then ``serve deploy <file> -a <dashboard url>``).

Configs are built from the stack through :func:`configs_for_stack`, typed with small protocols
so that ``serve_apps`` does not import ``cluster`` (the composition root passes its settings in).

Ingress: one HTTP port (``http_port``) with one route prefix per region (``/us-east``,
``/eu-west``), served by Serve's proxy or by HAProxy. The mode is a process-wide switch
(environment variables of the Ray head, :data:`INGRESS_MODES`) that the stack sets when it starts
the head; docs/serving.md compares the modes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from pydantic import SecretStr

from features.embeddings import EmbeddingView
from regions.config import RegionTopology
from serve_apps.config import (
    ApiKey,
    BreakerSettings,
    Limits,
    ServingConfig,
    StoreTimeouts,
)
from serve_apps.defaults import DEFAULT_REPLICAS

INGRESS_MODES: dict[str, dict[str, str]] = {
    # Serve's default Python HTTP proxy actor on the Serve port.
    "proxy": {},
    # HAProxy on the Serve HTTP port routes each route prefix straight to the ingress replica's
    # own HTTP server (direct ingress): no Python proxy hop.
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1"},
    # + direct ingress, gRPC between Serve actors, user code and router on the replica's main
    # loop, no per-request logs to stderr, GC frozen after start.
    "haproxy-throughput": {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    },
}
"""Environment of the Ray head (``ray start``) per ingress mode (``RaySettings.ingress``). These
are process-wide switches read when Serve's controller, proxies and replicas import
``ray.serve._private.constants``, so they cannot live in the Serve config file: ``freshline stack
up`` passes them to the head, and the Serve YAML names the mode it expects in a header."""

DEFAULT_INGRESS = "haproxy-throughput"


class _RedisNames(Protocol):
    @property
    def reader_user(self) -> str: ...


class StackLike(Protocol):
    """What :func:`configs_for_stack` reads (``cluster.settings.StackSettings`` satisfies it)."""

    @property
    def tenant(self) -> str: ...
    @property
    def topology(self) -> RegionTopology: ...
    @property
    def redis(self) -> _RedisNames: ...
    @property
    def secrets_file(self) -> Path: ...


def configs_for_stack(
    settings: StackLike,
    api_keys: Sequence[ApiKey],
    *,
    dynamodb_credentials: tuple[str, str] | None = None,
    catalog_import: str | None = "features.demo:card_transactions_catalog",
    catalog_inline: Mapping[str, Any] | None = None,
    registry_version: int | None = None,
    limits: Limits | None = None,
    password: SecretStr | None = None,
    replicas: int = DEFAULT_REPLICAS,
    timeouts: StoreTimeouts | None = None,
    breaker: BreakerSettings | None = None,
) -> list[ServingConfig]:
    """One config per region of the stack. Without ``password`` the replicas read the reader's
    password from the stack's secrets file (so a written Serve YAML holds no secret)."""
    key_id, secret = dynamodb_credentials or (None, None)
    return [
        ServingConfig(
            region=region.name,
            tenant=settings.tenant,
            topology=settings.topology,
            redis_reader_user=settings.redis.reader_user,
            redis_password=password,
            redis_password_file=None if password is not None else settings.secrets_file,
            dynamodb_access_key_id=None if key_id is None else SecretStr(key_id),
            dynamodb_secret_access_key=None if secret is None else SecretStr(secret),
            catalog_import=None if catalog_inline is not None else catalog_import,
            catalog_inline=None if catalog_inline is None else dict(catalog_inline),
            registry_version=registry_version,
            api_keys=tuple(api_keys),
            limits=limits or Limits(),
            replicas=replicas,
            timeouts=timeouts or StoreTimeouts(),
            breaker=breaker or BreakerSettings(),
        )
        for region in settings.topology
    ]


_SECRETS = {"redis_password", "dynamodb_access_key_id", "dynamodb_secret_access_key"}


def serve_config(
    configs: Sequence[ServingConfig],
    http_port: int,
    embeddings: Sequence[EmbeddingView] = (),
) -> dict[str, Any]:
    """The ``serve deploy`` document for ``configs``. It never holds a secret: the Redis password
    comes from ``redis_password_file``; DynamoDB credentials from boto3's default chain in the
    replicas (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in the Ray head's environment)."""
    apps = []
    for config in configs:
        if config.redis_password is not None:
            raise ValueError("a Serve config file must not hold a password: use the secrets file")
        apps.append(
            {
                "name": config.region,
                "route_prefix": config.route_prefix,
                "import_path": "serve_apps.app:build_app",
                "args": {
                    "config": config.model_dump(mode="json", exclude_none=True, exclude=_SECRETS),
                    "embeddings": _views(embeddings),
                },
            }
        )
    return {
        "proxy_location": "HeadOnly",
        "http_options": {"host": "127.0.0.1", "port": http_port, "keep_alive_timeout_s": 30},
        "logging_config": {"log_level": "WARNING", "enable_access_log": False},
        "applications": apps,
    }


def write_serve_config(
    configs: Sequence[ServingConfig],
    http_port: int,
    path: Path,
    *,
    ingress: str = DEFAULT_INGRESS,
    embeddings: Sequence[EmbeddingView] = (),
) -> Path:
    """Write the Serve YAML (mode 0600) and return its path. Its header names the ingress mode
    and the head environment it needs (Serve reads those switches from the environment only)."""
    import yaml

    env = INGRESS_MODES[ingress]
    needs = " ".join(f"{k}={v}" for k, v in env.items()) or "no RAY_SERVE_* variable"
    header = (
        f"# Freshline serving, ingress {ingress!r}: the Ray head must run with {needs}\n"
        "# (freshline stack up sets it from FRESHLINE_SERVE_INGRESS).\n"
    )
    path.write_text(
        header + yaml.safe_dump(serve_config(configs, http_port, embeddings), sort_keys=False)
    )
    path.chmod(0o600)
    return path


def deploy(
    configs: Sequence[ServingConfig],
    *,
    ray_address: str,
    http_port: int,
    blocking: bool = False,
    embeddings: Sequence[EmbeddingView] = (),
) -> list[str]:
    """Connect to the Ray cluster, start Serve on ``http_port`` (if not running) and run every
    region's application at its route prefix, serving ``POST /v1/similar`` for ``embeddings``.
    Returns the route prefixes. Idempotent."""
    import ray
    from ray import serve
    from ray.serve.api import RunTarget

    from serve_apps.app import build_app

    if not ray.is_initialized():
        ray.init(address=ray_address, log_to_driver=False)
    serve.start(
        http_options={"host": "127.0.0.1", "port": http_port, "keep_alive_timeout_s": 30},
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    # All regions in one call: Serve brings the apps up side by side, and most of a deploy is
    # spent waiting for new replicas, so one app after the other would add up those waits.
    targets = [
        RunTarget(
            build_app(
                {"config": config.model_dump(mode="python"), "embeddings": _views(embeddings)}
            ),
            name=config.region,
            route_prefix=config.route_prefix,
        )
        for config in configs
    ]
    fingerprint = deployment_fingerprint(configs, embeddings)
    regions = [c.region for c in configs]
    if not blocking and _deployed_as(fingerprint, regions):
        return [c.route_prefix for c in configs]
    serve.run_many(targets, blocking=blocking)
    _record_deployed(fingerprint)
    return [c.route_prefix for c in configs]


_CODE_PACKAGES = ("features", "regions", "serve_apps")  # what a replica imports of ours
_FINGERPRINT_KEY = b"freshline/serve/fingerprint"


def deployment_fingerprint(
    configs: Sequence[ServingConfig], embeddings: Sequence[EmbeddingView] = ()
) -> str:
    """A digest of what the replicas would run: every config, the embedding views and the source
    of the packages they import. Equal digests mean a redeploy would change nothing."""
    digest = hashlib.sha256()
    for config in configs:
        fields = config.model_dump(mode="python")  # secrets unmasked: a new password redeploys
        digest.update(orjson.dumps(fields, default=_plain, option=orjson.OPT_SORT_KEYS))
        # A replica reads its password file when it starts: a rotated file redeploys too.
        secret_file = config.redis_password_file
        if secret_file is not None and secret_file.is_file():
            digest.update(secret_file.read_bytes())
    digest.update(orjson.dumps(_views(embeddings), option=orjson.OPT_SORT_KEYS))
    root = Path(__file__).resolve().parent.parent
    for package in _CODE_PACKAGES:
        for source in sorted((root / package).rglob("*.py")):
            digest.update(str(source.relative_to(root)).encode())
            digest.update(source.read_bytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, (set, frozenset)):
        return sorted(str(v) for v in value)
    return str(value)


def _deployed_as(fingerprint: str, regions: Sequence[str]) -> bool:
    """Every region's app is running what ``fingerprint`` describes. Serve redeploys an app given
    as Python objects on every call, replacing each replica (seconds of cold replicas for
    nothing), so an unchanged deploy is skipped here."""
    from ray import serve
    from ray.experimental.internal_kv import _internal_kv_get
    from ray.serve.schema import ApplicationStatus

    if _internal_kv_get(_FINGERPRINT_KEY) != fingerprint.encode():
        return False
    apps = serve.status().applications
    return all(
        region in apps and apps[region].status == ApplicationStatus.RUNNING for region in regions
    )


def _record_deployed(fingerprint: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(_FINGERPRINT_KEY, fingerprint.encode(), overwrite=True)


def _views(embeddings: Sequence[EmbeddingView]) -> list[dict[str, Any]]:
    return [view.model_dump(mode="json") for view in embeddings]


def undeploy(regions: Sequence[str]) -> None:
    """Delete the regions' applications (Serve itself keeps running)."""
    from ray import serve
    from ray.experimental.internal_kv import _internal_kv_del

    _internal_kv_del(_FINGERPRINT_KEY)
    for region in regions:
        serve.delete(region)
