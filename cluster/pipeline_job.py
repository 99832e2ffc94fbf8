"""Entry point of the pipeline as a Ray job: ``python -m cluster.pipeline_job up|status|down``.

Submitted with ``ray job submit --working-dir . -- python -m cluster.pipeline_job up``, unchanged
on the local head or a multi-node cluster. This is a top of the program: it reads the environment
once (the same ``FRESHLINE_*`` variables as the CLI) and the secrets file, builds the frozen
configs and hands them to the supervisor (``actors/job.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import ray

from actors import job
from actors.config import DEFAULT_CONSUMERS, PipelineConfig
from actors.processor import TENANT
from actors.registry_feed import latest, publish_to_regions
from actors.runtime import NAMESPACE
from cluster.embeddings import (
    ensure_topics,
    fleet_config,
    index_status,
    start_catalogs,
    stop_index_actors,
)
from cluster.secrets import node_secrets
from cluster.settings import StackSettings, settings_from_env
from features.demo import card_transactions_catalog, item_embedding_views


def pipeline_config(settings: StackSettings, consumers: int) -> PipelineConfig:
    return PipelineConfig(
        bootstrap=settings.kafka.bootstrap,
        consumers=consumers,
        topology=settings.topology,
        iceberg_catalog_uri=settings.iceberg_catalog_uri,
        iceberg_warehouse=settings.iceberg_warehouse,
        redis_users=settings.redis,
    )


def up(settings: StackSettings, consumers: int) -> dict[str, Any]:
    # Read, never generated: a job on a worker must not mint passwords no Redis knows.
    secrets = node_secrets(settings.secrets_file, os.environ)
    config = pipeline_config(settings, consumers)
    # The latest applied registry version; the demo catalog until a repository is applied.
    current = latest(settings.kafka.bootstrap, TENANT)
    catalog = card_transactions_catalog() if current is None else current.catalog
    version = None if current is None else current.number
    result = job.up(config, catalog, secrets, version)
    if current is not None and result["registry_version"] == current.number:
        # The consumers compute it now: each region's Serve replicas may follow it. (A pipeline
        # already running an older version rolls to it and publishes it itself.)
        publish_to_regions(settings.topology, settings.redis, secrets, TENANT, current)
    views = item_embedding_views()
    fleet = fleet_config(
        settings.topology,
        bootstrap=settings.kafka.bootstrap,
        state_dir=settings.state_dir / "embeddings",
        users=settings.redis,
        secrets=secrets,
    )
    ensure_topics(settings.kafka.bootstrap, views)
    # Each view's catalog actor starts its index actors (one per region and live version).
    start_catalogs(views, fleet)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cluster.pipeline_job")
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
        result = job.status()
        if result is not None:
            result["embeddings"] = index_status(item_embedding_views(), settings.topology)
    else:
        indexes = stop_index_actors(item_embedding_views(), settings.topology)
        result = {"stopped": job.down(), "index_actors_stopped": indexes}
    print(json.dumps(result, indent=2, default=str))
    return 0 if result is not None else 3


if __name__ == "__main__":
    sys.exit(main())
