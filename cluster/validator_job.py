"""``freshline validate``: serving's sampled answers recomputed offline, compared value by value.

For every answer logged by serving (``regions.answer_log``, one stream per region) the validator
recomputes the feature with :func:`training.asof.as_of_values` as of the answer's ``as_of_ms``
from the Iceberg ``raw_events`` table (one pinned snapshot for the whole run), counting only the
events ingested before the answer (``_ingested_at_ms < as_of_ms``): data that arrived later
cannot count against serving. An answer matches when its status is the offline status and its
value equals the offline value (numbers within ``abs_tol`` or ``rel_tol``). So a default served
where offline has a value is a mismatch, and so is a value served where offline has none.

The report holds, per ``view:feature``: samples, matches, mismatches, the largest and mean
absolute and relative error over numeric pairs, and a few mismatched examples. The exit code is
1 when any feature's mismatch share exceeds ``--max-mismatch-share``. See docs/training.md.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from cluster.settings import StackSettings
from features.catalog import Catalog
from features.errors import ConfigError
from regions.answer_log import AnswerEntry

if TYPE_CHECKING:
    from training.events import EventsRead

DEFAULT_MAX_MISMATCH_SHARE = 0.01
DEFAULT_ABS_TOL = 1e-9
DEFAULT_REL_TOL = 1e-9
MAX_EXAMPLES = 5


@dataclass(frozen=True)
class Tolerance:
    """How close two numbers must be to count as equal (either bound suffices)."""

    abs_tol: float = DEFAULT_ABS_TOL
    rel_tol: float = DEFAULT_REL_TOL


@dataclass(frozen=True)
class Verdict:
    """One answer against its offline value; the errors are None unless both are numbers."""

    match: bool
    abs_error: float | None
    rel_error: float | None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def compare(
    served: Any, served_status: str, offline: Any, offline_status: str, tolerance: Tolerance
) -> Verdict:
    """Whether a served (value, status) is the offline one."""
    a, b = _number(served), _number(offline)
    abs_error = rel_error = None
    if a is not None and b is not None:
        abs_error = abs(a - b)
        rel_error = abs_error / abs(b) if b else (0.0 if abs_error == 0 else math.inf)
        same = math.isclose(a, b, rel_tol=tolerance.rel_tol, abs_tol=tolerance.abs_tol)
    else:  # a bool is not the number it equals in Python
        same = type(served) is type(offline) and served == offline
    return Verdict(same and served_status == offline_status, abs_error, rel_error)


@dataclass
class FeatureReport:
    """The comparison figures of one ``view:feature``."""

    samples: int = 0
    matches: int = 0
    abs_errors: list[float] = field(default_factory=list)
    rel_errors: list[float] = field(default_factory=list)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def mismatches(self) -> int:
        return self.samples - self.matches

    def add(self, entry: AnswerEntry, offline: Any, offline_status: str, verdict: Verdict) -> None:
        self.samples += 1
        self.matches += verdict.match
        if verdict.abs_error is not None and verdict.rel_error is not None:
            self.abs_errors.append(verdict.abs_error)
            self.rel_errors.append(verdict.rel_error)
        if not verdict.match and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(
                {
                    "request_id": entry.request_id,
                    "region": entry.region,
                    "store": entry.store,
                    "entity_id": entry.entity_id,
                    "as_of_ms": entry.as_of_ms,
                    "served": entry.value,
                    "served_status": entry.status,
                    "offline": offline,
                    "offline_status": offline_status,
                }
            )

    def figures(self) -> dict[str, Any]:
        def stat(values: list[float], fn: Any) -> float | None:
            return float(fn(values)) if values else None

        return {
            "samples": self.samples,
            "matches": self.matches,
            "mismatches": self.mismatches,
            "mismatch_share": self.mismatches / self.samples if self.samples else 0.0,
            "max_abs_error": stat(self.abs_errors, max),
            "mean_abs_error": stat(self.abs_errors, np.mean),
            "max_rel_error": stat(self.rel_errors, max),
            "mean_rel_error": stat(self.rel_errors, np.mean),
            "examples": self.examples,
        }


Offline = tuple[Any, str]


def build_report(
    entries: Sequence[AnswerEntry], offline: Sequence[Offline], tolerance: Tolerance
) -> dict[str, FeatureReport]:
    """Per ``view:feature``, every entry compared with its offline (value, status)."""
    reports: dict[str, FeatureReport] = defaultdict(FeatureReport)
    for entry, (value, status) in zip(entries, offline, strict=True):
        verdict = compare(entry.value, entry.status, value, status, tolerance)
        reports[entry.ref].add(entry, value, status, verdict)
    return dict(sorted(reports.items()))


def failing(reports: Mapping[str, FeatureReport], max_share: float) -> list[str]:
    """The features whose mismatch share exceeds ``max_share``."""
    return [
        ref
        for ref, report in reports.items()
        if report.samples and report.mismatches / report.samples > max_share
    ]


def recompute(entries: Sequence[AnswerEntry], catalog: Catalog, events: pa.Table) -> list[Offline]:
    """Each entry's offline (value, status) as of its ``as_of_ms``, from ``events`` (the raw
    events with ``_ingested_at_ms``), counting only events ingested before that instant."""
    from training.asof import Columns, as_of_values
    from training.events import INGESTED_AT
    from training.spec import parse_features

    out: list[Offline] = [(None, "")] * len(entries)
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for n, entry in enumerate(entries):
        groups[(entry.view, entry.as_of_ms)].append(n)
    for (_, as_of), rows in groups.items():
        refs = sorted({entries[n].ref for n in rows})
        (request,) = parse_features(catalog, refs)
        source = catalog.source(request.view.source)
        known = events.filter(pc.less(events[INGESTED_AT], pa.scalar(as_of, pa.int64())))
        values = as_of_values(
            request.view,
            request.features,
            known,
            columns=Columns(key=request.key_column, time=source.event_time_field),
            keys=[entries[n].entity_id for n in rows],
            ts=np.full(len(rows), as_of, dtype=np.int64),
        )
        for i, n in enumerate(rows):
            name = entries[n].feature
            out[n] = (_plain(values.values[name][i]), str(values.status[name][i]))
    return out


def _plain(value: Any) -> Any:
    """numpy scalars as Python ones (what JSON round-trips in the answer log)."""
    return value.item() if isinstance(value, np.generic) else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default=None, help="one region (default: every region)")
    parser.add_argument(
        "--since", default=None, help="ISO time (UTC when no offset): answers logged at or after"
    )
    parser.add_argument("--out", default=None, help="write the report as JSON here")
    parser.add_argument(
        "--max-mismatch-share",
        type=float,
        default=DEFAULT_MAX_MISMATCH_SHARE,
        help="exit 1 when a feature's mismatch share exceeds this",
    )
    parser.add_argument("--abs-tol", type=float, default=DEFAULT_ABS_TOL)
    parser.add_argument("--rel-tol", type=float, default=DEFAULT_REL_TOL)
    parser.add_argument("--snapshot-id", type=int, default=None, help="read this Iceberg snapshot")
    parser.add_argument(
        "--namespace", default=None, help="Iceberg namespace of raw_events (default: the stack's)"
    )


def _answers(settings: StackSettings, region: str | None, since_ms: int) -> list[AnswerEntry]:
    from cluster.secrets import read_secrets
    from regions.answer_log import read_answers, stream_key
    from regions.redis_store import RedisRole, redis_client

    secrets = read_secrets(settings.secrets_file, {})
    regions = [settings.topology.get(region)] if region else list(settings.topology.regions)
    out: list[AnswerEntry] = []
    for config in regions:
        client = redis_client(config, RedisRole.READER, settings.redis, secrets)
        try:
            out.extend(read_answers(client, stream_key("default"), since_ms=since_ms))
        finally:
            client.close()
    return out


def _events(
    args: argparse.Namespace,
    settings: StackSettings,
    catalog: Catalog,
    answered: set[str],
    until_ms: int,
) -> EventsRead:
    """The raw events of the ``answered`` views' one source up to ``until_ms``, ingested before
    it."""
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
        ingested_before_ms=until_ms,
        snapshot_id=args.snapshot_id,
    )


def run(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster.results import record_run
    from cluster.training_job import parse_instant_ms
    from features.demo import card_transactions_catalog

    catalog = card_transactions_catalog()
    since_ms = 0 if args.since is None else parse_instant_ms(args.since)
    entries = _answers(settings, args.region, since_ms)
    if not entries:
        console.print("no logged answers to validate")
        return 0
    answered = {e.view for e in entries}
    read = _events(args, settings, catalog, answered, max(e.as_of_ms for e in entries))
    offline = recompute(entries, catalog, read.table)
    reports = build_report(entries, offline, Tolerance(args.abs_tol, args.rel_tol))
    figures = {
        "snapshot_id": read.snapshot_id,
        "answers": len(entries),
        "features": {ref: r.figures() for ref, r in reports.items()},
    }
    if args.out:
        with open(args.out, "w", encoding="utf-8") as out:
            json.dump(figures, out, indent=2)
    record_run("consistency", figures, command="freshline validate")
    for ref, report in reports.items():
        console.print(
            f"{ref}: {report.samples} samples, {report.matches} match, "
            f"{report.mismatches} mismatch",
            highlight=False,
        )
    bad = failing(reports, args.max_mismatch_share)
    if bad:
        console.print(f"mismatch share over {args.max_mismatch_share}: {', '.join(bad)}")
        return 1
    return 0
