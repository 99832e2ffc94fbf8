"""The answer log: sampling by entity hash, the stream entry codec, the fire-and-forget writer
(a failed write is counted, never raised) and reading the stream back."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from regions.answer_log import (
    AnswerEntry,
    AnswerLog,
    AnswerLogError,
    decode,
    encode,
    read_answers,
    sampled,
    stream_key,
)

ENTRY = AnswerEntry(
    request_id="r1",
    region="us-east",
    store="redis-us-east",
    as_of_ms=1_764_000_000_123,
    entity="user",
    entity_id="u_1",
    view="user_spend",
    feature="tx_count_1h",
    value=3,
    status="present",
    event_time_ms=1_764_000_000_000,
)


class _Pipeline:
    def __init__(self, sink: StreamRedisFake) -> None:
        self.sink, self.queued = sink, []  # type: list[tuple[str, dict[str, str], int]]

    def xadd(self, key: str, fields: dict[str, str], *, maxlen: int, approximate: bool) -> None:
        assert approximate
        self.queued.append((key, fields, maxlen))

    async def execute(self) -> None:
        if self.sink.error is not None:
            raise self.sink.error
        self.sink.added.extend(self.queued)


class StreamRedisFake:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.added: list[tuple[str, dict[str, str], int]] = []

    def pipeline(self, *, transaction: bool) -> _Pipeline:
        assert not transaction
        return _Pipeline(self)


class _SyncRedis:
    """XRANGE over a list of (id, fields) with redis-py's exclusive ``(`` start."""

    def __init__(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        self.entries = entries

    def xrange(self, key: str, *, min: str, max: str, count: int) -> list[Any]:
        exclusive = min.startswith("(")
        low = tuple(int(p) for p in min.lstrip("(").split("-"))
        out = []
        for entry_id, fields in self.entries:
            at = tuple(int(p) for p in entry_id.decode().split("-"))
            if at > low or (at == low and not exclusive):
                out.append((entry_id, fields))
        return out[:count]


def test_sampling_is_a_function_of_the_entity_id_alone() -> None:
    ids = [f"u_{n}" for n in range(2_000)]
    assert [sampled(i, 0.3) for i in ids] == [sampled(i, 0.3) for i in ids]
    # A larger share keeps every entity a smaller one keeps: raising it never drops one.
    assert all(sampled(i, 0.5) for i in ids if sampled(i, 0.1))


@pytest.mark.parametrize("share", [0.01, 0.1, 0.5])
def test_the_share_sampled_is_the_share_asked_within_tolerance(share: float) -> None:
    n = 50_000
    kept = sum(sampled(f"user-{i}", share) for i in range(n))
    assert abs(kept / n - share) < 4 * (share * (1 - share) / n) ** 0.5 + 1e-3


def test_share_zero_disables_and_one_keeps_everything() -> None:
    ids = [f"u_{n}" for n in range(1_000)]
    assert not any(sampled(i, 0.0) for i in ids)
    assert all(sampled(i, 1.0) for i in ids)


def test_an_entry_survives_the_stream_codec() -> None:
    wire = {k.encode(): v.encode() for k, v in encode(ENTRY).items()}
    assert decode(wire) == ENTRY
    for value in (None, 2.5, "gold", [1, 2], True):
        odd = AnswerEntry(**{**ENTRY.__dict__, "value": value, "event_time_ms": None})
        assert decode(encode(odd)) == odd


def test_an_int_value_stays_an_int() -> None:
    assert type(decode(encode(ENTRY)).value) is int


def test_a_broken_entry_is_refused_with_a_clear_error() -> None:
    fields = encode(ENTRY)
    with pytest.raises(AnswerLogError, match="lacks status"):
        decode({k: v for k, v in fields.items() if k != "status"})
    with pytest.raises(AnswerLogError, match="bad number"):
        decode({**fields, "as_of_ms": "soon"})
    with pytest.raises(AnswerLogError, match="bad number"):
        decode({**fields, "value": "{not json"})


def _entries(ids: list[str]) -> list[AnswerEntry]:
    return [AnswerEntry(**{**ENTRY.__dict__, "entity_id": i}) for i in ids]


def test_the_writer_adds_only_sampled_entities_to_a_capped_stream() -> None:
    redis = StreamRedisFake()
    answers = AnswerLog(redis, stream_key("default"), 0.5, maxlen=10)
    ids = [f"u_{n}" for n in range(200)]

    async def go() -> int:
        taken = answers.offer(_entries(ids))
        await answers.drain()
        return taken

    taken = asyncio.run(go())
    assert taken == sum(sampled(i, 0.5) for i in ids) == answers.written == len(redis.added)
    assert {key for key, _, _ in redis.added} == {"fl:default:answers:v1"}
    assert {cap for _, _, cap in redis.added} == {10}
    assert {decode(f).entity_id for _, f, _ in redis.added} == {i for i in ids if sampled(i, 0.5)}


def test_a_failed_write_is_counted_not_raised() -> None:
    answers = AnswerLog(StreamRedisFake(ConnectionError("down")), "fl:default:answers:v1", 1.0)

    async def go() -> None:
        assert answers.offer(_entries(["u_1", "u_2"])) == 2
        await answers.drain()

    asyncio.run(go())
    assert (answers.written, answers.failed) == (0, 2)


def test_offers_beyond_the_pending_writes_are_dropped_and_counted() -> None:
    answers = AnswerLog(StreamRedisFake(), "fl:default:answers:v1", 1.0, max_pending=1)

    async def go() -> None:
        assert answers.offer(_entries(["u_1"])) == 1
        assert answers.offer(_entries(["u_2", "u_3"])) == 0  # the first is still out
        await answers.drain()

    asyncio.run(go())
    assert (answers.written, answers.dropped) == (1, 2)


def test_share_zero_writes_nothing() -> None:
    redis = StreamRedisFake()
    answers = AnswerLog(redis, "fl:default:answers:v1", 0.0)
    assert answers.offer(_entries(["u_1"])) == 0
    assert redis.added == []


def test_bad_writer_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        AnswerLog(StreamRedisFake(), "k", 1.5)
    with pytest.raises(ValueError, match="maxlen"):
        AnswerLog(StreamRedisFake(), "k", 0.5, maxlen=0)


def test_reading_back_pages_through_the_stream_from_since_and_skips_garbage() -> None:
    stored = [
        (f"{1000 + n}-0".encode(), {k.encode(): v.encode() for k, v in encode(e).items()})
        for n, e in enumerate(_entries([f"u_{n}" for n in range(2_500)]))
    ]
    stored.insert(5, (b"1004-1", {b"junk": b"1"}))
    read = read_answers(_SyncRedis(stored), "fl:default:answers:v1", since_ms=1003)
    assert [e.entity_id for e in read] == [f"u_{n}" for n in range(3, 2_500)]
