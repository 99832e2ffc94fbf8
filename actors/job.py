"""Entry point of the pipeline as a Ray job: ``python -m actors.job up|status|down``.

Submitted with ``ray job submit --working-dir . -- python -m actors.job up``, unchanged on the local
head or a multi-node cluster. This is a top of the program: it reads the environment once (the
same ``FRESHLINE_*`` variables as the CLI), builds the frozen configs and hands them to the actors.
``up`` starts a detached supervisor (so the pipeline outlives the job) and waits until every
consumer has restored its state; it is idempotent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import ray

from actors.config import DEFAULT_CONSUMERS, PipelineConfig
from actors.runtime import NAMESPACE, SUPERVISOR, Supervisor
from cluster.secrets import load_or_create_secrets
from cluster.settings import StackSettings, settings_from_env
from features.demo import card_transactions_catalog


def pipeline_config(settings: StackSettings, consumers: int) -> PipelineConfig:
    return PipelineConfig(
        bootstrap=settings.kafka.bootstrap,
        consumers=consumers,
        topology=settings.topology,
        iceberg_catalog_uri=settings.iceberg_catalog_uri,
        iceberg_warehouse=settings.iceberg_warehouse,
        redis_users=settings.redis,
    )


def up(settings: StackSettings, consumers: int, timeout_s: float = 180.0) -> dict[str, Any]:
    secrets = load_or_create_secrets(settings.secrets_file, os.environ)
    config = pipeline_config(settings, consumers)
    supervisor = Supervisor.options(
        name=SUPERVISOR, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(config, card_transactions_catalog(), secrets)
    deadline = time.monotonic() + timeout_s
    while True:
        status: dict[str, Any] = ray.get(supervisor.status.remote(), timeout=60)
        if all(c["ready"] for c in status["consumers"]) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def status() -> dict[str, Any] | None:
    try:
        supervisor = ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
    except ValueError:
        return None
    result: Any = ray.get(supervisor.status.remote(), timeout=60)
    return dict(result)


def down() -> bool:
    try:
        supervisor = ray.get_actor(SUPERVISOR, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.get(supervisor.stop.remote(), timeout=120)
    ray.kill(supervisor, no_restart=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors.job")
    parser.add_argument("verb", choices=["up", "status", "down"])
    parser.add_argument("--consumers", type=int, default=DEFAULT_CONSUMERS)
    parser.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or auto)"
    )
    args = parser.parse_args(argv)
    settings = settings_from_env(os.environ)
    ray.init(
        address=args.address or os.environ.get("RAY_ADDRESS", "auto"),
        namespace=NAMESPACE,
        log_to_driver=False,
    )
    result: Any
    if args.verb == "up":
        result = up(settings, args.consumers)
    elif args.verb == "status":
        result = status()
    else:
        result = {"stopped": down()}
    print(json.dumps(result, indent=2, default=str))
    return 0 if result is not None else 3


if __name__ == "__main__":
    sys.exit(main())
