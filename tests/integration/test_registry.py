"""The registry on the real broker: apply publishes numbered versions, a stale or concurrent apply
is refused with nothing published, and the pipeline and serving read the latest version."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from actors.registry_feed import history, latest, publish_to_regions
from cluster import registry
from cluster.registry import Publisher, RegistryConflict, apply, make_plan
from cluster.stack import Stack
from features.demo import card_transactions_catalog
from features.errors import CatalogError
from features.registry import RegistryVersion, plan
from regions.redis_store import RedisRole, redis_client
from regions.registry_mirror import registry_key
from tests.integration.conftest import stack_env

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "card_transactions"


def _tenant() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def _repo(tmp_path: Path, change: dict[str, Any] | None = None) -> Path:
    """A copy of the example repository; ``change`` updates user_spend's definition."""
    repo = tmp_path / f"repo-{uuid.uuid4().hex[:6]}"
    repo.mkdir()
    for file in EXAMPLE.rglob("*.yaml"):
        target = repo / file.relative_to(EXAMPLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.read_text())
    if change:
        path = repo / "views" / "user_spend.yaml"
        doc = yaml.safe_load(path.read_text())
        view = doc["views"][0]
        for key, value in change.items():
            if key == "window_of_first":
                view["features"][0]["window"] = value
            else:
                view[key] = value
        path.write_text(yaml.safe_dump(doc))
    return repo


def test_apply_publishes_numbered_versions_and_a_second_apply_changes_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tenant = _tenant()
    first = apply(kafka_bootstrap, tenant, make_plan(kafka_bootstrap, tenant, _repo(tmp_path)))
    assert first is not None and first.number == 1
    again = make_plan(kafka_bootstrap, tenant, _repo(tmp_path))
    assert again.changes == [] and apply(kafka_bootstrap, tenant, again) is None
    bumped = _repo(tmp_path, {"version": 2, "window_of_first": "10m"})
    second = apply(kafka_bootstrap, tenant, make_plan(kafka_bootstrap, tenant, bumped))
    assert second is not None and second.number == 2
    versions = history(kafka_bootstrap, tenant)
    assert [v.number for v in versions] == [1, 2]
    assert plan(card_transactions_catalog(), versions[0].catalog) == []
    assert versions[1].catalog.view("user_spend").version == 2
    assert history(kafka_bootstrap, _tenant()) == []  # tenants do not see each other


def test_a_changed_view_without_a_new_version_is_refused_before_anything_is_published(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tenant = _tenant()
    apply(kafka_bootstrap, tenant, make_plan(kafka_bootstrap, tenant, _repo(tmp_path)))
    with pytest.raises(CatalogError, match="version stays 1"):
        make_plan(kafka_bootstrap, tenant, _repo(tmp_path, {"window_of_first": "10m"}))
    assert [v.number for v in history(kafka_bootstrap, tenant)] == [1]


def test_a_plan_made_before_another_apply_is_refused(kafka_bootstrap: str, tmp_path: Path) -> None:
    tenant = _tenant()
    stale = make_plan(kafka_bootstrap, tenant, _repo(tmp_path))
    apply(kafka_bootstrap, tenant, make_plan(kafka_bootstrap, tenant, _repo(tmp_path)))
    with pytest.raises(RegistryConflict, match="moved from v0 to v1"):
        apply(kafka_bootstrap, tenant, stale)
    assert [v.number for v in history(kafka_bootstrap, tenant)] == [1]


def test_of_two_concurrent_applies_the_one_fenced_publishes_nothing(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    tenant = _tenant()
    planned = make_plan(kafka_bootstrap, tenant, _repo(tmp_path))
    first, second = Publisher(kafka_bootstrap, tenant), Publisher(kafka_bootstrap, tenant)
    try:
        first.fence()
        second.fence()  # started later: fences the first, whose plan saw the same v0
        with pytest.raises(RegistryConflict, match="another apply"):
            first.publish(planned, lambda: registry.datetime.now(registry.UTC))
        published = second.publish(planned, lambda: registry.datetime.now(registry.UTC))
    finally:
        first.close()
        second.close()
    versions = history(kafka_bootstrap, tenant)
    assert [v.number for v in versions] == [1]
    assert versions[0] == published


def test_the_cli_plans_and_applies_and_names_the_culprit_of_a_bad_repository(
    stack: Stack, tmp_path: Path
) -> None:
    """On the stack's own tenant, which the pipeline job and `serve up` read: the example
    repository is the demo catalog, so other tests of this session see no change."""
    env = stack_env(stack.settings)
    bootstrap = stack.settings.kafka.bootstrap

    def freshline(*args: str) -> subprocess.CompletedProcess[str]:
        # The CLI beside this interpreter: the checkout's own .venv may not exist (a worktree).
        argv = [str(Path(sys.executable).parent / "freshline"), *args]
        return subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=120, check=False
        )

    refused = freshline("apply", str(_repo(tmp_path, {"ttl": "1h"})))
    assert refused.returncode == 1
    assert "views/user_spend.yaml: views[user_spend].ttl:" in refused.stderr
    assert "Traceback" not in refused.stderr
    before = history(bootstrap, stack.settings.tenant)
    shown = freshline("plan", "--json", str(EXAMPLE))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["applied"] is None
    applied = freshline("apply", "--json", str(EXAMPLE))
    assert applied.returncode == 0, applied.stderr
    expected = None if before else 1  # applying the same repository again changes nothing
    assert json.loads(applied.stdout)["applied"] == expected
    current = latest(bootstrap, stack.settings.tenant)
    assert current is not None
    assert current.number == len(history(bootstrap, stack.settings.tenant)) >= 1
    assert plan(card_transactions_catalog(), current.catalog) == []


def test_the_pipeline_publishes_a_version_to_every_regions_redis_once(
    stack: Stack, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """What the pipeline calls once its consumers run a version: every region's Redis then holds
    it (the record decodes to the same catalog), and publishing it or an older one again writes
    nothing."""
    tenant = _tenant()
    first = apply(kafka_bootstrap, tenant, make_plan(kafka_bootstrap, tenant, _repo(tmp_path)))
    assert first is not None
    settings = stack.settings
    published = publish_to_regions(settings.topology, settings.redis, stack.secrets, tenant, first)
    assert published == list(settings.topology.names)
    again = publish_to_regions(settings.topology, settings.redis, stack.secrets, tenant, first)
    assert again == []
    for region in settings.topology:
        client = redis_client(region, RedisRole.READER, settings.redis, stack.secrets)
        try:
            raw = client.hget(registry_key(tenant), "record")
        finally:
            client.close()
        assert raw is not None
        assert RegistryVersion.decode(raw).catalog == first.catalog
