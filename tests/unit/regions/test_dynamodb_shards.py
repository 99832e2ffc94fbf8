"""Several sink shards rehydrating one DynamoDB table (``regions.rehydration``), on moto: the
table is ready only once every shard replayed its partitions, whatever order they finish in."""

from __future__ import annotations

from typing import Any

from features.shards import Shard
from regions.dynamodb_store import (
    _MARKER_KEY,
    STORE_READY,
    STORE_REHYDRATING,
    DynamoTileWriter,
)
from regions.rehydration import REHYDRATING_ELSEWHERE
from tests.unit.regions.test_dynamodb_writer import _empty_again, _moto_reader, _on_moto


def _shards(client: Any, name: str, count: int) -> list[DynamoTileWriter]:
    return [_on_moto(client, name, shard=Shard(i, count)) for i in range(count)]


def test_the_last_shard_out_marks_the_table_ready(moto_client: Any, table: str) -> None:
    first, second = _shards(moto_client, table, 2)
    assert second.shard_state() is None  # lost: both shards must replay
    first.begin_rehydration()
    assert second.shard_state() == STORE_REHYDRATING, "its part is still to do"
    second.begin_rehydration()  # joins the epoch the first began
    assert first.mark_ready() is True
    assert first.shard_state() == REHYDRATING_ELSEWHERE, "its part is done, the other's is not"
    assert _moto_reader(moto_client, table).store_state() == STORE_REHYDRATING
    assert second.mark_ready() is True
    assert _moto_reader(moto_client, table).store_state() == STORE_READY
    assert first.shard_state() == second.shard_state() == STORE_READY


def test_a_shard_that_replayed_into_a_table_emptied_since_declares_nothing(
    moto_client: Any, table: str
) -> None:
    first, second = _shards(moto_client, table, 2)
    first.begin_rehydration()
    second.begin_rehydration()
    _empty_again(moto_client, table)  # both replays so far went into data lost since
    second.begin_rehydration()  # the first to notice starts a new epoch, both shards pending
    assert first.mark_ready() is False, "its replay belongs to the epoch that was lost"
    assert first.shard_state() == STORE_REHYDRATING, "so it must replay again"
    first.begin_rehydration()
    assert first.mark_ready() is True
    assert second.mark_ready() is True
    assert _moto_reader(moto_client, table).store_state() == STORE_READY


def test_a_rehydration_begun_for_another_shard_count_starts_over(
    moto_client: Any, table: str
) -> None:
    old = _on_moto(moto_client, table, shard=Shard(0, 3))
    old.begin_rehydration()
    new = _shards(moto_client, table, 2)  # the pipeline was resharded mid-replay
    assert new[1].shard_state() == STORE_REHYDRATING, "shards 1 and 2 of 3 will never finish"
    for shard in new:
        shard.begin_rehydration()
    assert old.mark_ready() is False
    assert [s.mark_ready() for s in new] == [True, True]
    assert _moto_reader(moto_client, table).store_state() == STORE_READY


def test_a_rehydration_nobody_is_pending_for_is_finished_by_the_next_shard(
    moto_client: Any, table: str
) -> None:
    first, second = _shards(moto_client, table, 2)
    first.begin_rehydration()
    second.begin_rehydration()
    assert first.mark_ready() is True
    # The second shard left the pending set and died before its update that marks it ready.
    moto_client.update_item(
        TableName=table,
        Key=_MARKER_KEY,
        UpdateExpression="DELETE #p :me",
        ExpressionAttributeNames={"#p": "pending"},
        ExpressionAttributeValues={":me": {"NS": ["1"]}},
    )
    successor = _on_moto(moto_client, table, shard=Shard(1, 2))
    assert successor.shard_state() == STORE_REHYDRATING, "it must not wait for nobody"
    successor.begin_rehydration()
    assert successor.mark_ready() is True
    assert _moto_reader(moto_client, table).store_state() == STORE_READY
