"""The read-path benchmark measures what it says: both layouts answer the same on its history,
and the data a read meets has changed since the previous read of that entity."""

from __future__ import annotations

import orjson

from benchmarks import read_path as rp


def test_both_layouts_answer_alike_and_each_read_meets_changed_data() -> None:
    catalog = rp.benchmark_catalog()
    reader = rp.Reader.of(catalog)
    now = 1_764_000_000_000
    stores = rp.Stores(catalog, [now])
    rp._history(stores, now)
    groups = rp.cached_groups(stores.groups)
    rp._check_same(reader, stores, groups)  # SystemExit naming the part that differs

    ids = (rp.user_id(3),)
    plan = rp.Plan(reader, 1).plan_for(ids)
    before = orjson.loads(rp.new_read(reader, plan, stores, stores.clock[0]))["views"][0]
    stores.clock[0] += rp.STEP_MS
    stores.ingest([stores.event(ids[0], stores.clock[0])])
    after_new = orjson.loads(rp.new_read(reader, plan, stores, stores.clock[0]))["views"][0]
    after_old = orjson.loads(rp.old_read(reader, plan, stores, stores.clock[0], groups))
    assert after_new["ids"] == list(ids)
    assert after_new["values"] != before["values"], "a read after an event sees it"
    assert after_new["values"] == after_old["views"][0]["values"]
