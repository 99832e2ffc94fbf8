"""``freshline training-set``: a point-in-time training set from the stack's offline tables.

Runs where it is started: locally it starts (and stops) a private Ray; under ``ray job submit``
it joins the job's cluster (``RAY_ADDRESS``). The spine and the output path must be readable and
writable where the driver runs. See docs/training.md.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime

from rich.console import Console

from cluster.settings import StackSettings
from features.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from training.build import DEFAULT_BUCKETS
    from training.spec import DEFAULT_TIMESTAMP_COLUMN

    parser.add_argument("--spine", required=True, help="spine file (.parquet or .csv)")
    parser.add_argument(
        "--features",
        required=True,
        help="comma-separated view:feature, e.g. user_spend:tx_count_1h",
    )
    parser.add_argument("--out", required=True, help="output Parquet file")
    parser.add_argument(
        "--ingested-before",
        default=None,
        help="ISO time (UTC when no offset): ignore events ingested at or after it",
    )
    parser.add_argument("--timestamp-column", default=DEFAULT_TIMESTAMP_COLUMN)
    parser.add_argument("--snapshot-id", type=int, default=None, help="rebuild from this snapshot")
    parser.add_argument("--buckets", type=int, default=DEFAULT_BUCKETS, help="entity hash buckets")
    parser.add_argument(
        "--namespace", default=None, help="Iceberg namespace of raw_events (default: the stack's)"
    )
    parser.add_argument(
        "--ray-address",
        default=None,
        help="a running Ray to use (default: RAY_ADDRESS under ray job submit, else a private one)",
    )


def parse_instant_ms(text: str) -> int:
    """Epoch ms of an ISO 8601 time; a time without an offset is UTC."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--ingested-before {text!r} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def run(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    import ray
    from pyiceberg.exceptions import NoSuchTableError

    from actors.offline_tables import RAW_TABLE
    from cluster.services.offline import NAMESPACE, iceberg_catalog
    from features.demo import card_transactions_catalog
    from training.build import TrainingSetOptions, write_training_set
    from training.exceptions import TrainingError

    options = TrainingSetOptions(
        timestamp_column=args.timestamp_column,
        ingested_before_ms=None
        if args.ingested_before is None
        else parse_instant_ms(args.ingested_before),
        snapshot_id=args.snapshot_id,
        buckets=args.buckets,
    )
    name = (args.namespace or NAMESPACE, RAW_TABLE)
    try:
        table = iceberg_catalog(settings).load_table(name)
    except NoSuchTableError:
        raise TrainingError(f"no table {'.'.join(name)}: has the offline writer run?") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray_address, logging_level=logging.WARNING)
    try:
        metadata = write_training_set(
            args.spine,
            [f for f in args.features.split(",") if f.strip()],
            args.out,
            catalog=card_transactions_catalog(),
            events_table=table,
            options=options,
        )
    finally:
        if started:
            ray.shutdown()
    console.print(f"wrote {args.out}")
    for key, value in metadata.items():
        console.print(f"  {key} = {value}", highlight=False)
    return 0
