from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

from features.errors import StoreTimeout, StoreUnavailable
from features.exceptions import CorruptState
from features.keys import OnlineKey
from features.shards import SOLE, Shard
from regions.config import default_topology
from regions.dynamodb_reader import DynamoTileReader
from regions.dynamodb_store import (
    MARKER_PK,
    STORE_READY,
    STORE_REHYDRATING,
    DynamoTileWriter,
    create_online_table,
    require_ready,
)
from regions.exceptions import StoreNotReady, StoreRejected, WriteThrottled
from regions.resilience import Deadline, ExponentialBackoff, RetryPolicy, no_jitter
from regions.tiles import TileWrite
from tests.unit.regions.fakes import FakeClock, FakeDynamo

REGION = default_topology().get("us-east")
WALL = 1_700_000_000.0
RETRY = RetryPolicy(4, ExponentialBackoff(0.05, 0.4, jitter=no_jitter))


def _writer(fake: FakeDynamo, clock: FakeClock) -> DynamoTileWriter:
    # The sinks' writer (not seeding): batches only. The marker is tested on moto, at the end.
    return DynamoTileWriter(
        REGION,
        fake.table,
        fake.factory(),
        retry=RETRY,
        sleep=clock.sleep,
        wall_clock=lambda: WALL,
        seeding=False,
    )


def _w(key: str, field: str, version: int, value: bytes | None = b"x") -> TileWrite:
    return TileWrite(key, field, value, version, ttl_ms=60_500)


def _batch(n: int) -> list[TileWrite]:
    return [_w(f"fl:card:{i}", "amt_sum_1h", 1, b"%d" % i) for i in range(n)]


def test_items_carry_value_version_and_expiry() -> None:
    fake, clock = FakeDynamo(), FakeClock()
    _writer(fake, clock).apply([_w("fl:card:1", "cnt_5m", 7, b"\x00\x01")])
    item = fake.items[("fl:card:1", "cnt_5m")]
    assert item["v"] == {"B": b"\x00\x01"}
    assert item["ver"] == {"N": "7"}
    assert item["expires_at"] == {"N": str(int(WALL) + 61)}  # 60.5 s rounded up


def test_coalesces_to_the_highest_version_per_item() -> None:
    fake, clock = FakeDynamo(), FakeClock()
    batch = [
        _w("fl:a", "f", 3, b"three"),
        _w("fl:a", "f", 5, b"five"),
        _w("fl:a", "f", 4, b"four"),
        _w("fl:a", "g", 1, b"g1"),
        _w("fl:b", "f", 2, b"b2"),
    ]
    assert _writer(fake, clock).apply(batch) == 3
    assert len(fake.write_calls) == 1
    assert len(fake.write_calls[0]) == 3
    assert fake.items[("fl:a", "f")]["v"] == {"B": b"five"}


def test_delete_wins_a_version_tie_and_becomes_a_delete_request() -> None:
    fake, clock = FakeDynamo(), FakeClock()
    writer = _writer(fake, clock)
    writer.apply([_w("fl:a", "f", 1, b"old")])
    writer.apply([_w("fl:a", "f", 2, b"new"), _w("fl:a", "f", 2, None)])
    assert fake.write_calls[-1] == [
        {"DeleteRequest": {"Key": {"pk": {"S": "fl:a"}, "sk": {"S": "f"}}}}
    ]
    assert ("fl:a", "f") not in fake.items


def test_chunks_into_calls_of_25() -> None:
    fake, clock = FakeDynamo(), FakeClock()
    assert _writer(fake, clock).apply(_batch(60)) == 60
    assert [len(c) for c in fake.write_calls] == [25, 25, 10]
    assert len(fake.items) == 60
    assert clock.slept == []


def test_empty_batch_makes_no_call() -> None:
    fake = FakeDynamo()
    assert _writer(fake, FakeClock()).apply([]) == 0
    assert fake.write_calls == []


def test_unprocessed_items_are_retried_with_backoff_until_written() -> None:
    fake, clock = FakeDynamo(refuse=[10, 4, 0]), FakeClock()
    assert _writer(fake, clock).apply(_batch(25)) == 25
    assert [len(c) for c in fake.write_calls] == [25, 10, 4]
    assert clock.slept == [0.05, 0.1]
    assert len(fake.items) == 25


def test_retry_exhaustion_raises_with_every_unwritten_item() -> None:
    # Chunk 1 keeps 3 items unprocessed through all 4 attempts; chunk 2 is never sent.
    fake, clock = FakeDynamo(refuse=[3, 3, 3, 3]), FakeClock()
    batch = _batch(30)
    with pytest.raises(WriteThrottled) as raised:
        _writer(fake, clock).apply(batch)
    unwritten = raised.value.unwritten
    assert {(w.key, w.field) for w in unwritten} == {(w.key, w.field) for w in batch[22:]}
    assert len(unwritten) == 3 + 5
    assert set(fake.items) | {(w.key, w.field) for w in unwritten} == {
        (w.key, w.field) for w in batch
    }  # nothing is dropped: every write is stored or reported
    assert len(fake.write_calls) == 4
    assert clock.slept == [0.05, 0.1, 0.2]
    assert raised.value.retry_after == pytest.approx(0.4)


def test_retry_stops_when_the_deadline_cannot_cover_the_backoff() -> None:
    fake, clock = FakeDynamo(refuse=[1] * 10), FakeClock()
    with pytest.raises(WriteThrottled):
        _writer(fake, clock).apply(_batch(2), Deadline(0.1, clock))
    assert clock.slept == [0.05]


def test_whole_call_throttling_is_retried_like_unprocessed_items() -> None:
    throttled = ClientError(
        {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
        "BatchWriteItem",
    )
    fake, clock = FakeDynamo(fail={0: throttled}), FakeClock()
    assert _writer(fake, clock).apply(_batch(3)) == 3
    assert len(fake.write_calls) == 2
    assert len(fake.items) == 3


def test_transient_transport_error_is_retried() -> None:
    fake, clock = FakeDynamo(fail={0: EndpointConnectionError(endpoint_url="x")}), FakeClock()
    assert _writer(fake, clock).apply(_batch(3)) == 3
    assert clock.slept == [0.05]


@pytest.mark.parametrize(
    ("error", "mapped"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), StoreUnavailable),
        (ConnectTimeoutError(endpoint_url="http://127.0.0.1:1"), StoreTimeout),
        (
            ClientError({"Error": {"Code": "ValidationException"}}, "BatchWriteItem"),
            StoreRejected,
        ),
    ],
)
def test_botocore_errors_are_mapped(error: Exception, mapped: type[Exception]) -> None:
    fake, clock = FakeDynamo(fail={n: error for n in range(10)}), FakeClock()
    with pytest.raises(mapped):
        _writer(fake, clock).apply(_batch(1))


# --- reader ----------------------------------------------------------------------------------


def _reader(fake: FakeDynamo, clock: FakeClock, wall: float = WALL) -> DynamoTileReader:
    return DynamoTileReader(
        REGION, fake.table, fake.factory(), retry=RETRY, sleep=clock.sleep, wall_clock=lambda: wall
    )


def test_reader_get_fields_retries_unprocessed_keys() -> None:
    fake, clock = FakeDynamo(refuse_gets=[2, 0]), FakeClock()
    _writer(fake, clock).apply(_batch(5))
    wanted = {f"fl:card:{i}": ["amt_sum_1h", "missing"] for i in range(5)} | {"fl:none": ["f"]}
    got = _reader(fake, clock).get_fields(wanted)
    assert got == {f"fl:card:{i}": {"amt_sum_1h": b"%d" % i} for i in range(5)} | {"fl:none": {}}
    assert [len(k) for k in fake.get_calls] == [11, 2]
    assert clock.slept == [0.05]


def test_reader_get_all_skips_expired_items() -> None:
    fake, clock = FakeDynamo(), FakeClock()
    _writer(fake, clock).apply([_w("fl:a", "f", 1, b"1"), _w("fl:a", "g", 1, b"2")])
    assert _reader(fake, clock).get_all(["fl:a", "fl:b"]) == {
        "fl:a": {"f": b"1", "g": b"2"},
        "fl:b": {},
    }
    assert _reader(fake, clock, wall=WALL + 62).get_all(["fl:a"]) == {"fl:a": {}}


def test_reader_scan_all_equals_get_all_in_a_few_pages() -> None:
    """The oracle check reads whole tables: one paginated Scan, same answer as a Query per key
    (expired items skipped, other keys ignored, every asked key present)."""
    fake, clock = FakeDynamo(page_size=7), FakeClock()
    _writer(fake, clock).apply([*_batch(20), _w("fl:a", "f", 1, b"1")])
    keys = [f"fl:card:{i}" for i in range(0, 20, 2)] + ["fl:a", "fl:none"]
    reader = _reader(fake, clock)
    assert reader.scan_all(keys) == reader.get_all(keys)
    assert fake.scan_calls == 3  # 21 items by 7
    later = _reader(fake, clock, wall=WALL + 10**6)
    assert later.scan_all(["fl:a"]) == {"fl:a": {}}


# --- completeness marker, on moto's DynamoDB in this process ---------------------------------
# Conditions are the point here, so they run on moto's implementation of DynamoDB rather than on
# a hand-written fake of it.


def _on_moto(
    client: Any, table: str, *, seeding: bool = False, shard: Shard = SOLE
) -> DynamoTileWriter:
    clock = FakeClock()
    return DynamoTileWriter(
        REGION,
        table,
        lambda _: client,
        retry=RETRY,
        sleep=clock.sleep,
        seeding=seeding,
        shard=shard,
    )


def _moto_reader(client: Any, table: str) -> DynamoTileReader:
    return DynamoTileReader(REGION, table, lambda _: client, retry=RETRY, consistent=True)


def _empty_again(client: Any, table: str) -> None:
    """What a restarted moto or a recreated table looks like: the same table, nothing in it."""
    client.delete_table(TableName=table)
    create_online_table(client, table)


def test_a_new_table_has_no_marker_and_a_sink_batch_never_marks_it(
    moto_client: Any, table: str
) -> None:
    sink = _on_moto(moto_client, table)
    sink.apply(_batch(3))
    assert sink.store_state() is None
    assert _moto_reader(moto_client, table).store_state() is None
    with pytest.raises(StoreNotReady):
        require_ready("dynamodb-us-east", None)


def test_a_successor_of_a_sink_joins_its_rehydration_and_either_may_end_it(
    moto_client: Any, table: str
) -> None:
    first, second = _on_moto(moto_client, table), _on_moto(moto_client, table)
    first.begin_rehydration()
    assert first.store_state() == STORE_REHYDRATING
    second.begin_rehydration()  # e.g. a successor of a sink that died mid-replay: it joins
    assert second.mark_ready() is True  # its replay began after the loss, so it is complete
    assert _moto_reader(moto_client, table).store_state() == STORE_READY
    assert first.mark_ready() is True  # ready already: nothing left to replay for anyone
    require_ready("dynamodb-us-east", STORE_READY)


def test_a_table_emptied_again_during_the_rehydration_is_never_declared_ready(
    moto_client: Any, table: str
) -> None:
    sink = _on_moto(moto_client, table)
    sink.begin_rehydration()
    sink.apply(_batch(2))
    _empty_again(moto_client, table)
    assert sink.mark_ready() is False
    assert sink.store_state() is None, "the failed update must not have created a marker"


def test_a_seeding_writer_marks_a_new_table_ready_but_never_ends_a_rehydration(
    moto_client: Any, table: str
) -> None:
    seeder = _on_moto(moto_client, table, seeding=True)
    seeder.apply([])
    assert seeder.store_state() is None, "nothing written, nothing declared"
    seeder.apply(_batch(2))
    assert seeder.store_state() == STORE_READY
    _empty_again(moto_client, table)
    sink = _on_moto(moto_client, table)
    sink.begin_rehydration()
    _on_moto(moto_client, table, seeding=True).apply(_batch(1))
    assert sink.store_state() == STORE_REHYDRATING


def test_the_marker_is_no_tile_and_tile_reads_never_return_it(moto_client: Any, table: str) -> None:
    sink = _on_moto(moto_client, table)
    sink.begin_rehydration()
    sink.apply(_batch(2))
    reader = _moto_reader(moto_client, table)
    assert reader.get_all(["fl:card:0"]) == {"fl:card:0": {"amt_sum_1h": b"0"}}
    # parse inverts every key features.keys can encode, so no entity id can produce this one.
    with pytest.raises(CorruptState):
        OnlineKey.parse(MARKER_PK)


def test_a_missing_table_is_unavailable_not_rejected_so_the_sink_retries(
    moto_client: Any, table: str
) -> None:
    sink = _on_moto(moto_client, table)
    moto_client.delete_table(TableName=table)
    with pytest.raises(StoreUnavailable, match="table missing"):
        sink.store_state()
    with pytest.raises(StoreUnavailable, match="table missing"):
        sink.apply(_batch(1))
    with pytest.raises(StoreUnavailable):
        sink.begin_rehydration()
    with pytest.raises(StoreUnavailable):
        _moto_reader(moto_client, table).store_state()


def test_reader_get_all_stops_querying_once_the_deadline_has_passed() -> None:
    """Serving abandons a late DynamoDB call on its pool thread: the thread must stop too, not
    run one Query per remaining key for a request nobody waits for."""
    fake, clock = FakeDynamo(), FakeClock()
    _writer(fake, clock).apply(_batch(10))
    queries = []
    slow_query = fake.query

    def query(**kwargs: Any) -> dict[str, Any]:
        queries.append(kwargs)
        clock.advance(0.05)  # each Query takes 50 ms
        return slow_query(**kwargs)

    fake.query = query  # type: ignore[method-assign]
    reader = _reader(fake, clock)
    keys = [f"fl:card:{i}" for i in range(10)]
    with pytest.raises(StoreTimeout):
        reader.get_all(keys, Deadline(0.12, clock))
    assert len(queries) == 3  # at 0, 50 and 100 ms; at 150 ms the deadline had passed
    assert reader.get_all(keys[:2], Deadline(1.0, clock)).keys() == set(keys[:2])
