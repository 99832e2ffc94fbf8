from __future__ import annotations

from types import SimpleNamespace

import orjson

from cluster.flow import EventFlowTail


def _record(partition: int, value: bytes) -> SimpleNamespace:
    return SimpleNamespace(partition=partition, value=value)


def _event(user: str, event_time_ms: int) -> bytes:
    return orjson.dumps({"user_id": user, "amount": 12.5, "event_time_ms": event_time_ms})


def test_busiest_entities_keep_their_newest_event_time_whatever_the_arrival_order() -> None:
    tail = EventFlowTail("unused:9092", "fl.card_tx", now=lambda: 0.0, wall_ms=lambda: 10_000)
    tail._absorb(
        [
            _record(0, _event("u1", 2_000)),
            _record(1, _event("u1", 1_000)),  # out of order: must not move the newest back
            _record(0, _event("u2", 1_500)),
            _record(2, b"not json"),
            _record(2, orjson.dumps({"user_id": "u3"})),  # no event time
        ]
    )
    snap = tail.snapshot(top=1)
    assert (snap.consumed, snap.unparseable) == (5, 2)
    assert snap.per_partition == {0: 2, 1: 1, 2: 2}
    [(user, flow)] = snap.top_entities
    assert (user, flow.events, flow.last_event_time_ms) == ("u1", 2, 2_000)
    assert snap.newest_event_time_ms == 2_000


def test_an_event_stamped_in_the_future_is_counted_but_is_not_the_newest() -> None:
    """The demo shows each busy user's newest event age: a future-stamped event (which the
    pipeline holds until its time) made it negative."""
    tail = EventFlowTail("unused:9092", "fl.card_tx", now=lambda: 0.0, wall_ms=lambda: 5_000)
    tail._absorb([_record(0, _event("u1", 4_000)), _record(0, _event("u1", 900_000))])
    snap = tail.snapshot()
    [(user, flow)] = snap.top_entities
    assert (user, flow.events, flow.last_event_time_ms) == ("u1", 2, 4_000)
    assert snap.newest_event_time_ms == 4_000
