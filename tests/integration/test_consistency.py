"""The consistency validator against the real stack: events through Kafka, the partition
processor's writes and the production Redis writer into both regions' Redis, and through the
offline writer into Iceberg; serving deployed with every answer logged; reads over HTTP.

- Clean serving: every logged answer is ``equal``, one-shot and continuous, the latter as a Ray
  job exporting its counts through Ray's metrics and resuming from its cursor without counting an
  answer twice; a wrong tile written into one region is ``real_skew`` on exactly its feature.
- Injected skew: one region's sink loses a share of its writes (the test applies the changelog
  with the production writer and skips a deterministic share: no real sink runs here), the other
  region serves with a catalog whose ``spend_sum_1h`` is a mean; each is reported as real skew on
  exactly the answers that differ from the independent oracle (``chaos.oracle``).
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster.stack import Stack
from features.blocks import BlockLayout, block_partition, decode_tiles, encode_block
from features.keys import OnlineKey
from regions.answer_log import AnswerEntry
from regions.tiles import TileWrite, decode_field
from tests.integration.consistency_world import (
    CATALOG,
    USER_FEATURES,
    World,
    admin,
    apply_writes,
    build_world,
    continuous,
    deployed,
    empty_answer_logs,
    logged,
    online_writes,
    ray_job,
    read,
    scraped,
    skipped,
    submit_validator,
    validate,
    wait_logged,
)
from tests.integration.test_training import _expected

pytestmark = pytest.mark.integration
SKEWED = "user_spend:last_amount"  # the one feature of the unwindowed group that is read
CLASSES = ("equal", "late_data", "freshness_lag", "fallback", "real_skew")


def _tampered_blocks(stack: Stack, region: str, user: str, amount: float) -> list[TileWrite]:
    """``user``'s stored blocks in ``region`` with the ``last_amount`` state's value replaced by
    ``amount`` (a value no event ever had) and every other state untouched, at a version above
    the stored one: a store serving exactly one wrong feature."""
    view = CATALOG.view("user_spend")
    layout = BlockLayout.for_view(view)
    assert layout.unwindowed is not None
    index = [f.name for f in layout.unwindowed.features].index("last_amount")
    key = OnlineKey(stack.settings.tenant, "user_spend", view.version, user).encode(
        max_id_bytes=CATALOG.entity("user").max_id_bytes
    )
    client = admin(stack, region)
    try:
        stored = client.hgetall(key)
        ttl_ms = max(int(client.pttl(key)), 60_000)
    finally:
        client.close()
    writes = []
    for name, raw in stored.items():
        field = name.decode()
        version, payload = decode_field(raw)
        if block_partition(field) is None or payload is None:
            continue
        partition, tiles = decode_tiles(layout, payload)
        states = tiles.get((None, None))
        if states is None or states[index] is None:
            continue
        event_time, order, _ = states[index]
        states[index] = (event_time, order, amount)
        block = encode_block(layout, partition, tiles)
        writes.append(TileWrite(key, field, block, version + 1, ttl_ms))
    assert writes, f"{user} has no stored last_amount in {region}"
    return writes


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"


def test_clean_serving_is_equal_and_a_wrong_tile_is_real_skew_on_its_feature(
    stack: Stack, kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    world = build_world(stack, kafka_bootstrap, topic_factory, run, users=6, count=400)
    users = [*world.users, f"u_{run}_ghost"]
    writes = online_writes(world.ledger, world.ingested_by_ms, stack.settings.tenant, batch=10_000)
    for region in stack.settings.topology.names:
        apply_writes(stack, region, writes)
    empty_answer_logs(stack)
    namespace = ("--namespace", world.namespace)
    state = tmp_path / "validator-state.json"
    with deployed(stack) as http:
        regions = stack.settings.topology.names
        per_read = len(users) * len(USER_FEATURES)
        for region in regions:
            read(http, region, users)
            wait_logged(stack, region, per_read)
        metrics_file = tmp_path / "textfile" / "freshline_validator.prom"
        code, report, printed = validate(stack, tmp_path, "clean", *namespace,
                                         "--metrics-file", str(metrics_file))  # fmt: skip
        assert code == 0, report
        assert report["answers"] == per_read * len(regions)
        for ref in USER_FEATURES:
            figures = report["features"][ref]
            assert figures["compared"] == figures["equal"] == len(users) * len(regions), ref
            assert ref in printed
        assert (tmp_path / "results" / "consistency.jsonl").exists()
        prom = metrics_file.read_text()
        assert 'class="real_skew"} 0' in prom and 'class="equal"} 14' in prom

        # Continuous, as a Ray job: every answer counted once, through Ray's metrics.
        job = f"validator-{run}"
        submit_validator(stack, job, *namespace, "--interval", "1s", "--settle", "0s",
                         "--state", str(state))  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            want = {(*ref.split(":"), "equal"): len(users) * len(regions) for ref in USER_FEATURES}
            while True:
                got = scraped(stack, "ray_freshline_validator_answers")
                if got == want:
                    break
                assert time.monotonic() < deadline, (got, ray_job(stack, "logs", job))
                time.sleep(1.0)
        finally:
            ray_job(stack, "stop", job)
        # Restarted from its state: nothing new, nothing counted twice.
        out = continuous(stack, tmp_path, *namespace, "--settle", "0s", "--cycles", "1",
                         "--state", str(state))  # fmt: skip
        assert ": 0 answers, 0 real skew" in out, out
        totals = _totals(state)
        assert all(totals[ref]["equal"] == len(users) * len(regions) for ref in USER_FEATURES)

        # Skew: one region's Redis serves a last_amount no event ever had, for one user.
        skewed_region, victim = regions[-1], users[0]
        apply_writes(stack, skewed_region, _tampered_blocks(stack, skewed_region, victim, 4242.5))
        since = time.time_ns() // 1_000_000
        time.sleep(0.01)  # answers logged from here on are stream ids at or after ``since``
        read(http, skewed_region, users)
        wait_logged(stack, skewed_region, 2 * per_read)
        code, report, _ = validate(stack, tmp_path, "skewed", *namespace, "--region",
                                   skewed_region, "--since", _iso(since))  # fmt: skip
        assert code == 1
        assert report["answers"] == per_read
        skewed = {ref: f for ref, f in report["features"].items() if f["real_skew"]}
        assert list(skewed) == [SKEWED]
        assert skewed[SKEWED]["real_skew"] == 1
        (example,) = skewed[SKEWED]["examples"]
        assert (example["entity_id"], example["served"]) == (victim, 4242.5)
        assert example["offline"] != 4242.5

        # The continuous run resumes after its cursor: only the new answers, the skew among them.
        out = continuous(stack, tmp_path, *namespace, "--settle", "0s", "--cycles", "1",
                         "--state", str(state))  # fmt: skip
        assert f": {per_read} answers, 1 real skew" in out, out
        after = _totals(state)
        assert after[SKEWED]["compared"] == totals[SKEWED]["compared"] + len(users)
        assert after[SKEWED]["real_skew"] == 1


def _totals(path: Path) -> dict[str, Any]:
    import json

    totals: dict[str, Any] = json.loads(path.read_text())["totals"]
    return totals


def _affected(world: World, entries: list[AnswerEntry]) -> dict[str, set[tuple[str, str]]]:
    """Per feature, the (request, entity) of the answers that differ from the oracle."""
    accepted = world.accepted
    out: dict[str, set[tuple[str, str]]] = {ref: set() for ref in USER_FEATURES}
    for e in entries:
        value, status = _expected(CATALOG, accepted, e.ref, e.entity_id, e.as_of_ms)
        same = status == e.status and (
            math.isclose(value, e.value, rel_tol=1e-9, abs_tol=1e-9)
            if isinstance(value, float) and isinstance(e.value, int | float)
            else value == e.value
        )
        if not same:
            out[e.ref].add((e.request_id, e.entity_id))
    return out


def _mean_sum_catalog() -> dict[str, Any]:
    """The demo catalog with ``user_spend:spend_sum_1h`` computed as a mean (the same stored
    slots, so the region's blocks decode and only that feature's answers change)."""
    data: dict[str, Any] = CATALOG.model_dump(mode="json")
    (view,) = [v for v in data["views"] if v["name"] == "user_spend"]
    (feature,) = [f for f in view["features"] if f["name"] == "spend_sum_1h"]
    feature["aggregation"] = "mean"
    return data


def test_a_lossy_sink_and_a_changed_aggregation_are_real_skew_on_exactly_the_affected_answers(
    stack: Stack, kafka_bootstrap: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:8]
    world = build_world(stack, kafka_bootstrap, topic_factory, run, users=40, count=800)
    writes = online_writes(world.ledger, world.ingested_by_ms, stack.settings.tenant, batch=25)
    lossy, changed = stack.settings.topology.names[:2]
    lost = [w for w in writes if skipped(w, 0.3)]
    assert 0 < len(lost) < len(writes)
    apply_writes(stack, lossy, [w for w in writes if not skipped(w, 0.3)])
    apply_writes(stack, changed, writes)
    empty_answer_logs(stack)
    per_read = len(world.users) * len(USER_FEATURES)
    with deployed(stack, {changed: _mean_sum_catalog()}) as http:
        # Past the freshness target since the last event arrived: a store still without it is
        # not lagging within its target, it is wrong.
        target = CATALOG.view("user_spend").freshness_target.total_seconds() * 1000
        time.sleep(max(0.0, (world.ingested_by_ms + target + 1_000) / 1000 - time.time()))
        for region in (lossy, changed):
            read(http, region, world.users)
            wait_logged(stack, region, per_read)
    for region in (lossy, changed):
        affected = _affected(world, logged(stack, region))
        code, report, _ = validate(stack, tmp_path, region, "--namespace", world.namespace,
                                   "--region", region)  # fmt: skip
        assert report["answers"] == per_read
        features = report["features"]
        for ref in USER_FEATURES:
            figures = features[ref]
            assert figures["real_skew"] == len(affected[ref]), (region, ref, figures)
            assert figures["equal"] + figures["real_skew"] == figures["compared"], (region, ref)
            assert {(e["request_id"], e["entity_id"]) for e in figures["examples"]} <= affected[ref]
        assert code == (1 if any(affected.values()) else 0)
        if region == changed:
            assert {ref for ref, rows in affected.items() if rows} == {"user_spend:spend_sum_1h"}
    assert any(_affected(world, logged(stack, lossy)).values()), "the lost writes left stale blocks"
