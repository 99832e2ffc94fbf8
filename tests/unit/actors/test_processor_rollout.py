"""A view rolling out is computed in both versions from the same stream: each version's blocks
equal those of a processor computing that version alone, and a restore rebuilds both."""

from __future__ import annotations

from typing import Any

from actors.changelog import ChangelogRecord
from actors.processor import PartitionProcessor, view_ident
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from features.keys import OnlineKey
from features.rollout import merge_repository
from tests.unit.actors.test_processor import NOW, _stream
from tests.unit.features.test_rollout import _v2

V1 = card_transactions_catalog()
BOTH = merge_repository(V1, _v2())


def _run(catalog: Catalog, records: list[Any]) -> tuple[PartitionProcessor, list[ChangelogRecord]]:
    processor = PartitionProcessor(catalog, SOURCE, 0, lambda: NOW)
    log: list[ChangelogRecord] = []
    for i in range(0, len(records), 97):
        processor.process(records[i : i + 97])
        log += processor.drain_changes()
    return processor, log


def _blocks(log: list[ChangelogRecord], view: str, version: int) -> dict[tuple[str, str], Any]:
    """The last value written per (key, field) of one view version."""
    out = {}
    for record in log:
        key = OnlineKey.parse(record.write.key)
        if (key.view, key.version) == (view, version):
            out[(record.write.key, record.write.field)] = record.write.value
    return out


def test_both_versions_are_computed_and_each_equals_computing_it_alone() -> None:
    records = _stream(2_000, seed=7)
    _, both = _run(BOTH, records)
    _, old = _run(V1, records)
    _, new = _run(_v2(), records)
    assert _blocks(both, "user_spend", 1) == _blocks(old, "user_spend", 1) != {}
    assert _blocks(both, "user_spend", 2) == _blocks(new, "user_spend", 2) != {}
    assert _blocks(both, "user_spend", 1) != _blocks(new, "user_spend", 2)  # the 2h window
    assert _blocks(both, "merchant_activity", 1) == _blocks(old, "merchant_activity", 1)


def test_a_restore_rebuilds_both_versions_and_a_retired_one_is_left_out() -> None:
    records = _stream(1_500, seed=3)
    processor, log = _run(BOTH, records)
    restored = PartitionProcessor(BOTH, SOURCE, 0, lambda: NOW)
    restored.restore(log, processor.state.watermark, processor.state.last_offset)
    assert restored.state.tiles.keys() == processor.state.tiles.keys()
    idents = {entity[0] for entity in restored.state.tiles}
    assert {view_ident("user_spend", 1), view_ident("user_spend", 2)} <= idents
    promoted = PartitionProcessor(_v2(), SOURCE, 0, lambda: NOW)
    promoted.restore(log, processor.state.watermark, processor.state.last_offset)
    assert view_ident("user_spend", 1) not in {e[0] for e in promoted.state.tiles}
