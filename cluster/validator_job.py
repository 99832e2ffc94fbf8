"""``freshline validate``: serving's sampled answers recomputed offline and classified.

For every answer logged by serving (``regions.answer_log``, one stream per region) the validator
recomputes the feature with the training-set code (:mod:`training.recompute`) from the Iceberg
``raw_events`` table (one pinned snapshot per run or cycle), as of the request time and as of the
answer's served watermark, and puts it in one class of :mod:`training.validate`: ``equal``,
``late_data``, ``freshness_lag``, ``fallback`` or ``real_skew``.

One-shot (default): the answers logged since ``--since``; prints a report per feature, writes it
as JSON (``--out``, ``--json`` to stdout), a Prometheus textfile (``--metrics-file``) and a line
of ``benchmarks/results/consistency.jsonl``; exit 1 when a feature's real-skew share exceeds
``--max-skew-share``.

Continuous (``--continuous --interval 60s``): every interval, the answers after the cursor that
are at least ``--settle`` old (so the offline writer has committed their events), then the cursor
and totals are saved (:mod:`training.validate_state`) and the cycle's counts exported through
Ray's metrics API. Runs as a Ray job (``ray job submit ... -- python -m cluster.cli validate
--continuous``). See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cluster.settings import StackSettings
from features.catalog import Catalog
from features.durations import parse_duration, to_ms
from features.errors import ConfigError
from regions.answer_log import AnswerEntry
from training.validate import (
    CLASSES,
    DEFAULT_ABS_TOL,
    DEFAULT_REL_TOL,
    REAL_SKEW,
    FeatureTally,
    Tolerance,
    failing,
    tally,
)

if TYPE_CHECKING:
    from training.events import EventsRead
    from training.validate_state import ValidatorState

DEFAULT_MAX_SKEW_SHARE = 0.0
DEFAULT_INTERVAL = "60s"
DEFAULT_SETTLE = "30s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default=None, help="one region (default: every region)")
    parser.add_argument(
        "--since",
        default=None,
        help="answers logged at or after: a duration back from now (1h, 30m) or an ISO time "
        "(UTC when no offset)",
    )
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--max-skew-share",
        "--max-mismatch-share",
        dest="max_skew_share",
        type=float,
        default=DEFAULT_MAX_SKEW_SHARE,
        help="one-shot: exit 1 when a feature's real-skew share exceeds this (default 0)",
    )
    parser.add_argument("--abs-tol", type=float, default=DEFAULT_ABS_TOL)
    parser.add_argument("--rel-tol", type=float, default=DEFAULT_REL_TOL)
    parser.add_argument("--snapshot-id", type=int, default=None, help="read this Iceberg snapshot")
    parser.add_argument(
        "--namespace", default=None, help="Iceberg namespace of raw_events (default: the stack's)"
    )
    parser.add_argument(
        "--metrics-file", default=None, help="one-shot: write a Prometheus textfile here"
    )
    parser.add_argument("--continuous", action="store_true", help="validate every --interval")
    parser.add_argument("--interval", default=DEFAULT_INTERVAL, help="continuous: cycle period")
    parser.add_argument(
        "--settle",
        default=DEFAULT_SETTLE,
        help="continuous: only answers at least this old (the offline table must hold their data)",
    )
    parser.add_argument(
        "--state",
        default=None,
        help="continuous: cursor and totals file (default <state dir>/validator/state.json)",
    )
    parser.add_argument(
        "--cycles", type=int, default=0, help="continuous: stop after this many cycles (0: never)"
    )


def _duration_ms(text: str, flag: str) -> int:
    try:
        return to_ms(parse_duration(text, field=flag))
    except (ValueError, ConfigError) as exc:
        raise ConfigError(f"{flag} {text!r} is not a duration such as 60s: {exc}") from None


def since_ms(text: str | None, now_ms: int) -> int:
    """Where ``--since`` starts, in epoch ms: 0 when absent; ``now_ms`` minus a duration (``1h``,
    ``30m``); else an ISO 8601 time (UTC when it has no offset)."""
    if text is None:
        return 0
    try:
        return now_ms - to_ms(parse_duration(text, field="--since"))
    except ConfigError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--since {text!r} is neither a duration (1h, 30m) nor an ISO 8601 time"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _regions(settings: StackSettings, region: str | None) -> list[str]:
    return [settings.topology.get(region).name] if region else list(settings.topology.names)


def _client(settings: StackSettings, region: str) -> Any:
    from cluster.secrets import read_secrets
    from regions.redis_store import RedisRole, redis_client

    secrets = read_secrets(settings.secrets_file, {})
    config = settings.topology.get(region)
    return redis_client(config, RedisRole.READER, settings.redis, secrets)


def _events(
    args: argparse.Namespace,
    settings: StackSettings,
    catalog: Catalog,
    answered: set[str],
    until_ms: int,
) -> EventsRead:
    """Every raw event of the ``answered`` views' one source up to ``until_ms``, whenever it was
    ingested (``truth`` counts late data; the recomputation applies the ingest cutoffs)."""
    from actors.offline_tables import RAW_TABLE
    from cluster.services.offline import NAMESPACE, iceberg_catalog
    from training.events import INGESTED_AT, event_columns, read_events

    table = iceberg_catalog(settings).load_table((args.namespace or NAMESPACE, RAW_TABLE))
    views = [catalog.view(name) for name in sorted(answered)]
    sources = {v.source for v in views}
    if len(sources) != 1:
        raise ConfigError(f"the answered views read {len(sources)} sources; one raw_events is one")
    keys = [v.key_field(catalog) for v in views]
    values = [f.column for v in views for f in v.features if f.column]
    time_column = catalog.source(sources.pop()).event_time_field
    columns = [*event_columns(keys, time_column, values), INGESTED_AT]
    return read_events(
        table,
        list(dict.fromkeys(columns)),
        time_column=time_column,
        until_ms=until_ms,
        snapshot_id=args.snapshot_id,
    )


def validate(
    args: argparse.Namespace,
    settings: StackSettings,
    catalog: Catalog,
    entries: Sequence[AnswerEntry],
) -> tuple[dict[str, FeatureTally], int | None]:
    """``entries`` classified per feature, and the snapshot id read (None without entries)."""
    from training.recompute import recompute

    if not entries:
        return {}, None
    tolerance = Tolerance(args.abs_tol, args.rel_tol)
    answered = {e.view for e in entries}
    read = _events(args, settings, catalog, answered, max(e.as_of_ms for e in entries))
    offline = recompute(entries, catalog, read.table, tolerance)
    targets = {name: to_ms(catalog.view(name).freshness_target) for name in answered}
    return tally(entries, offline, targets, tolerance), read.snapshot_id


def print_report(console: Console, tallies: dict[str, FeatureTally]) -> None:
    """One line per feature: compared, each class, the largest errors."""
    for ref, t in tallies.items():
        classes = ", ".join(f"{t.counts[k]} {k}" for k in CLASSES)
        errors = f"max abs {t.max_abs_error}, max rel {t.max_rel_error}"
        console.print(f"{ref}: {t.compared} compared: {classes}; {errors}", highlight=False)


def run(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from features.demo import card_transactions_catalog

    catalog = card_transactions_catalog()
    if args.continuous:
        return _continuous(args, settings, catalog, console)
    return _one_shot(args, settings, catalog, console)


def _one_shot(
    args: argparse.Namespace, settings: StackSettings, catalog: Catalog, console: Console
) -> int:
    from cluster.results import record_run
    from regions.answer_log import read_answers, stream_key
    from training.validate_metrics import textfile, write_textfile

    start_ms = since_ms(args.since, time.time_ns() // 1_000_000)
    entries: list[AnswerEntry] = []
    for region in _regions(settings, args.region):
        client = _client(settings, region)
        try:
            entries += read_answers(client, stream_key(settings.tenant), since_ms=start_ms)
        finally:
            client.close()
    tallies, snapshot = validate(args, settings, catalog, entries)
    figures = {
        "snapshot_id": snapshot,
        "answers": len(entries),
        "features": {ref: t.figures() for ref, t in tallies.items()},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2), encoding="utf-8")
    if args.metrics_file:
        write_textfile(Path(args.metrics_file), textfile(tallies, time.time()))
    if entries:
        record_run("consistency", figures, command="freshline validate")
    if args.json:
        console.print_json(json.dumps(figures))
    elif not entries:
        console.print("no logged answers to validate")
    else:
        print_report(console, tallies)
    bad = failing(tallies, args.max_skew_share)
    if bad:
        console.print(f"real-skew share over {args.max_skew_share}: {', '.join(bad)}")
        return 1
    return 0


def _continuous(
    args: argparse.Namespace,
    settings: StackSettings,
    catalog: Catalog,
    console: Console,
    *,
    now_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    import ray

    from training.validate_metrics import RayValidatorMetrics
    from training.validate_state import load_state

    interval_ms = _duration_ms(args.interval, "--interval")
    settle_ms = _duration_ms(args.settle, "--settle")
    path = Path(args.state) if args.state else settings.state_dir / "validator" / "state.json"
    state = load_state(path)
    if not ray.is_initialized():  # the metrics go to the cluster's agent, so join the stack's
        ray.init(address=os.environ.get("RAY_ADDRESS") or settings.ray.address)
    metrics = RayValidatorMetrics()
    cycle = 0
    while True:
        started = now_ms()
        done = cycle_once(args, settings, catalog, state, path, until_ms=started - settle_ms)
        metrics.export(done, state.totals, state.validated_until_ms)
        answers = sum(t.compared for t in done.values())
        skew = sum(t.counts[REAL_SKEW] for t in done.values())
        console.print(f"cycle {state.cycles}: {answers} answers, {skew} real skew", highlight=False)
        cycle += 1
        if args.cycles and cycle >= args.cycles:
            print_report(console, state.totals)
            return 0
        sleep(max(0.0, (started + interval_ms - now_ms()) / 1000))


def cycle_once(
    args: argparse.Namespace,
    settings: StackSettings,
    catalog: Catalog,
    state: ValidatorState,
    path: Path,
    *,
    until_ms: int,
) -> dict[str, FeatureTally]:
    """Validate every region's answers after its cursor up to ``until_ms``, then save the moved
    cursors and the new totals (before the caller exports the cycle: no double count)."""
    from regions.answer_log import read_answers_after, stream_key
    from training.validate_state import save_state

    start_ms = since_ms(args.since, until_ms)
    entries: list[AnswerEntry] = []
    for region in _regions(settings, args.region):
        client = _client(settings, region)
        try:
            got, last = read_answers_after(
                client,
                stream_key(settings.tenant),
                after=state.cursors.get(region),
                since_ms=start_ms,
                until_ms=until_ms,
            )
        finally:
            client.close()
        entries += got
        if last is not None:
            state.cursors[region] = last
        state.validated_until_ms[region] = until_ms
    tallies, _ = validate(args, settings, catalog, entries)
    state.add(tallies)
    save_state(path, state)
    return tallies
