"""The columnar batch path (``actors.columnar``, the consumer's) leaves a processor exactly where
the per-event path (``columnar=False``, the reference) leaves it: the same outcomes and dead
letters, the same accepted events handed to the offline writer, the same drained changelog
records byte for byte, and the same state (watermark, tiles with every state dumped to bytes, in
the same order, the expiry heap as a list, held events, versions, pending changes), over random
batches of a catalog that uses every aggregation, with out-of-order, late, held, duplicated and
malformed events, and a clock that moves."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.offline_feed import FeedEncoder, decode
from actors.processor import PartitionProcessor, RawRecord
from actors.records import BatchOutcome
from features.catalog import Catalog
from features.errors import RejectReason

T0 = 1_764_000_000_000
SKEW_MS = 10_000


def _catalog() -> Catalog:
    def f(name: str, agg: str, column: str | None = None, **kw: Any) -> dict[str, Any]:
        return {"name": name, "aggregation": agg, **({"column": column} if column else {}), **kw}

    return Catalog.from_dict(
        {
            "entities": [
                {"name": "user", "join_key": "user_id", "max_id_bytes": 16},
                {"name": "merchant", "join_key": "merchant_id", "max_id_bytes": 16},
            ],
            "sources": [
                {
                    "name": "tx",
                    "topic": "t.tx",
                    "partitions": 4,
                    "key_field": "user_id",
                    "event_time_field": "ts",
                    "event_type_field": "kind",
                    "event_types": ["tx", "refund"],
                    "fields": {
                        "kind": "string",
                        "user_id": "string",
                        "merchant_id": "string",
                        "amount": "float",
                        "qty": "int",
                        "flag": "bool",
                        "ts": "int",
                    },
                    "out_of_orderness": "2s",
                    "allowed_lateness": "5s",
                    "max_future_skew": "10s",
                    "max_payload_bytes": 512,
                }
            ],
            "views": [
                {
                    "name": "u",
                    "version": 1,
                    "entity": "user",
                    "source": "tx",
                    "ttl": "2h",
                    "freshness_target": "5s",
                    "features": [
                        f("n_30s", "count", window="30s"),
                        f("sum_30s", "sum", "amount", window="30s"),
                        f("mean_1m", "mean", "amount", window="1m"),
                        f("min_10m", "min", "amount", window="10m"),
                        f("max_10m", "max", "amount", window="10m"),
                        f("merchants_1h", "distinct_count", "merchant_id", window="1h"),
                        f("qtys_10m", "distinct_count", "qty", window="10m", hll_precision=4),
                        f("qty_sum_1h", "sum", "qty", window="1h"),
                        f("last_qty_1m", "last_n", "qty", window="1m", n=3),
                        f("last_amount", "last", "amount"),
                        f("cusum", "cusum", "amount", cusum_warmup=3, cusum_threshold=2.0),
                    ],
                },
                {
                    "name": "m",
                    "version": 3,
                    "entity": "merchant",
                    "source": "tx",
                    "ttl": "2h",
                    "freshness_target": "5s",
                    "features": [
                        f("n_1m", "count", window="1m"),
                        f("mean_1h", "mean", "qty", window="1h"),
                        f("users_1h", "distinct_count", "user_id", window="1h"),
                        f("max_1h", "max", "qty", window="1h"),
                        f("flag_last", "last", "flag"),
                    ],
                },
            ],
        }
    )


CATALOG = _catalog()
FEED = FeedEncoder(CATALOG.source("tx"))
USERS = ["u1", "u2", "u3", "u\u00e9", "u" * 16]  # a non-ASCII id takes the per-record check
MERCHANTS = ["m1", "m2", "m3"]
AMOUNTS = [0.0, -0.0, 0.1, 0.2, 1.5, -2.25, 3, 1e16, -1e16, 1e-300, 2**53 + 1]
QTYS = [0, 1, -1, 7, 2**53 + 1, 2**63, 2**64 - 1, -(2**63)]
_DROP = object()
BROKEN: list[bytes | None] = [
    None,
    b"{oops",
    b"[1]",
    b'{"amount": NaN}',
    b"x" * 600,
]
ODD_FIELDS: list[tuple[str, Any]] = [
    ("amount", "1.5"),
    ("amount", True),
    ("amount", _DROP),
    ("amount", None),
    ("qty", 1.5),
    ("qty", True),
    ("flag", 1),
    ("kind", "chargeback"),
    ("user_id", ""),
    ("user_id", "u" * 17),
    ("user_id", "u\x01"),
    ("merchant_id", 5),
    ("ts", 1.0),
]


@st.composite
def _event(draw: st.DrawFn, now: int) -> bytes | None:
    kind = draw(st.sampled_from(["ok"] * 8 + ["late", "held", "future", "broken", "odd"]))
    if kind == "broken":
        return draw(st.sampled_from(BROKEN))
    shift = {"ok": -draw(st.integers(0, 9_000)), "late": -draw(st.integers(7_000, 90_000))}
    shift |= {"held": draw(st.integers(1, SKEW_MS)), "future": SKEW_MS + draw(st.integers(1, 99))}
    event: dict[str, Any] = {
        "kind": draw(st.sampled_from(["tx", "refund"])),
        "user_id": draw(st.sampled_from(USERS)),
        "merchant_id": draw(st.sampled_from(MERCHANTS)),
        "amount": draw(st.sampled_from(AMOUNTS) | st.floats(-1e6, 1e6)),
        "qty": draw(st.sampled_from(QTYS)),
        "flag": draw(st.booleans()),
        "ts": now + shift.get(kind, 0),
    }
    if kind == "odd":
        name, value = draw(st.sampled_from(ODD_FIELDS))
        event[name] = value
    return orjson.dumps({k: v for k, v in event.items() if v is not _DROP})


@st.composite
def _steps(draw: st.DrawFn) -> list[tuple[int, list[RawRecord], bool]]:
    """Batches, each with its clock and whether a drain follows it."""
    steps, now, offset = [], T0, draw(st.integers(0, 5))
    for _ in range(draw(st.integers(1, 6))):
        now += draw(st.sampled_from([0, 1, 999, 4_000, 30_000, 400_000]))
        values = draw(st.lists(_event(now), max_size=40))
        if values and draw(st.booleans()):  # a record delivered twice, byte for byte
            values.append(values[draw(st.integers(0, len(values) - 1))])
        records = []
        for value in values:
            offset += draw(st.sampled_from([1, 1, 1, 2, 7]))
            records.append(RawRecord(offset, b"k", value))  # type: ignore[arg-type]
        steps.append((now, records, draw(st.booleans())))
    return steps


def _dumped(processor: PartitionProcessor, view: str, tile: Any, states: list[Any]) -> list[bytes]:
    group = next(g for g in processor._views_by_name[view].groups if g.tile_ms == tile[0])
    return [a.dump(s) for a, s in zip(group.aggregators, states, strict=True)]


def _snapshot(processor: PartitionProcessor) -> dict[str, Any]:
    """Everything a processor holds, order included, with every tile state as its bytes."""
    state = processor.state
    return {
        "watermark": state.watermark.max_event_time_ms,
        "last_offset": state.last_offset,
        "tiles": [
            (entity, [(t, _dumped(processor, entity[0], t, s)) for t, s in tiles.items()])
            for entity, tiles in state.tiles.items()
        ],
        "versions": list(state.versions.items()),
        "expiry": list(state.expiry),
        "pending": [(k, orjson.dumps(v)) for k, v in state.pending.items()],
        "due": list(state.due),
        "changed": list(processor._changed.items()),
        "pending_changed": sorted(processor._pending_changed),
    }


def _handed_on(records: list[RawRecord], outcome: BatchOutcome) -> list[dict[str, Any]]:
    """The rows the consumer hands to the offline writer for this batch."""
    values = FEED.encode(1, records, outcome.accepted_events)
    return [row for value in values for row in decode(value).to_pylist()]


def _run(steps: list[tuple[int, list[RawRecord], bool]]) -> None:
    clock = [T0]
    both = [
        PartitionProcessor(CATALOG, "tx", 1, lambda: clock[0], columnar=columnar)
        for columnar in (False, True)
    ]
    reference, columnar = both
    for now, records, drain in steps:
        clock[0] = now
        by_columns, by_events = columnar.process(records), reference.process(records)
        assert by_columns == by_events
        assert _handed_on(records, by_columns) == _handed_on(records, by_events)
        if drain:
            assert columnar.drain_changes() == reference.drain_changes()
        assert _snapshot(columnar) == _snapshot(reference)
    assert columnar.drain_changes() == reference.drain_changes()
    assert _snapshot(columnar) == _snapshot(reference)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_steps())
def test_the_columnar_path_leaves_the_processor_where_the_per_event_path_does(
    steps: list[tuple[int, list[RawRecord], bool]],
) -> None:
    _run(steps)


def _fixed_steps(seed: int) -> list[tuple[int, list[RawRecord], bool]]:
    import random

    rng = random.Random(seed)
    steps, now, offset = [], T0, 0
    for batch in range(12):
        now += rng.choice([1_000, 5_000, 90_000])
        records = []
        for _ in range(rng.randrange(50, 400)):
            offset += 1
            roll = rng.random()
            ts = now - rng.randrange(0, 9_000)
            if roll < 0.05:
                ts = now - 60_000  # late
            elif roll < 0.08:
                ts = now + rng.randrange(1, SKEW_MS)  # held until the clock reaches it
            event = {
                "kind": "tx",
                "user_id": rng.choice(USERS),
                "merchant_id": rng.choice(MERCHANTS),
                "amount": rng.choice([*AMOUNTS, rng.uniform(-5, 5)]),
                "qty": rng.choice(QTYS),
                "flag": rng.random() < 0.5,
                "ts": ts,
            }
            value = b"{oops" if roll > 0.97 else orjson.dumps(event)
            records.append(RawRecord(offset, b"k", value))
        steps.append((now, records, batch % 3 != 1))
    return steps


@pytest.mark.parametrize("seed", [1, 2])
def test_long_batches_with_every_kind_of_event_agree(seed: int) -> None:
    steps = _fixed_steps(seed)
    reasons = set()
    probe = PartitionProcessor(CATALOG, "tx", 1, lambda: steps[0][0] + 1, columnar=False)
    for _now, records, _drain in steps:
        reasons |= {d.reason for d in probe.process(records).dead_letters}
    assert {RejectReason.LATE, RejectReason.BAD_JSON} <= reasons, "the log must hold both"
    _run(steps)
