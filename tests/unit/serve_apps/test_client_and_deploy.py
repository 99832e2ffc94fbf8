"""FeatureClient failover and retries (against httpx's mock transport), and the Serve config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from regions.config import default_topology
from regions.resilience import ExponentialBackoff, no_jitter
from serve_apps.client import FeatureClient, FeatureRequestRefused, FeatureServiceUnavailable
from serve_apps.config import ApiKey, Limits, ServingConfig, hash_api_key
from serve_apps.deploy import configs_for_stack, deployment_fingerprint, serve_config
from tests.unit.serve_apps.fakes import FakeClock

OK = {"region": "eu-west", "results": [{"id": "u_1", "features": {"v:f": {"value": 3}}}]}


def _client(handler: Any, clock: FakeClock) -> FeatureClient:
    return FeatureClient(
        "http://serve",
        "key",
        regions=("us-east", "eu-west"),
        timeout_s=1.0,
        backoff=ExponentialBackoff(base_s=0.01, cap_s=0.01, jitter=no_jitter),
        monotonic=clock,
        sleep=clock.advance,
        transport=httpx.MockTransport(handler),
    )


def test_fails_over_on_5xx_and_transport_errors_in_preference_order() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        assert request.headers["x-api-key"] == "key"
        if request.url.path.startswith("/us-east"):
            return httpx.Response(503, json={"error": "overloaded", "request_id": "r"})
        return httpx.Response(200, content=orjson.dumps(OK))

    clock = FakeClock()
    body = _client(handler, clock).get_features({"user": ["u_1"]}, ["v:f"])
    assert seen == ["/us-east/v1/features", "/eu-west/v1/features"]
    assert body["region"] == "eu-west"
    assert _client(handler, clock).values(body) == {("u_1", "v:f"): 3}

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(FeatureServiceUnavailable):
        _client(down, clock).get_features({"user": ["u_1"]}, ["v:f"])


def test_4xx_is_not_retried_anywhere() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(422, json={"error": "too_many_entities", "request_id": "r"})

    with pytest.raises(FeatureRequestRefused) as refused:
        _client(handler, FakeClock()).get_features({"user": ["u_1"]}, ["v:f"])
    assert (refused.value.status, refused.value.code) == (422, "too_many_entities")
    assert calls == ["/us-east/v1/features"]


class _Stack:
    tenant = "acme"
    topology = default_topology()
    secrets_file = Path("/state/secrets.json")

    class redis:  # noqa: N801 - mirrors StackSettings.redis
        reader_user = "fl-reader"


def test_serve_config_has_one_app_per_region_and_no_secret() -> None:
    configs = configs_for_stack(_Stack(), [ApiKey.from_raw("c", "raw-key")])
    doc = serve_config(configs, 8000)
    assert [a["route_prefix"] for a in doc["applications"]] == ["/us-east", "/eu-west"]
    assert {c.tenant for c in configs} == {"acme"}  # the stack's tenant, not the default
    text = orjson.dumps(doc).decode()
    assert "raw-key" not in text and hash_api_key("raw-key") in text
    assert doc["applications"][0]["args"]["config"]["redis_password_file"] == "/state/secrets.json"
    rebuilt = ServingConfig.model_validate(doc["applications"][1]["args"]["config"])
    assert rebuilt.region == "eu-west" and rebuilt.redis_reader_user == "fl-reader"
    with_password = configs_for_stack(_Stack(), [], password=SecretStr("p"))
    with pytest.raises(ValueError, match="password"):
        serve_config(with_password, 8000)


def test_config_invariants() -> None:
    base: dict[str, Any] = {"region": "us-east", "topology": default_topology()}
    with pytest.raises(ValueError, match="exactly one"):
        ServingConfig(**base)
    with pytest.raises(ValueError, match="topology"):
        ServingConfig(**{**base, "region": "mars-1", "redis_password": SecretStr("p")})
    with pytest.raises(ValueError, match="redis_max_connections"):
        ServingConfig(
            **base,
            redis_password=SecretStr("p"),
            limits=Limits(max_in_flight=512),
            redis_max_connections=64,
        )
    assert "p" not in repr(ServingConfig(**base, redis_password=SecretStr("p")).redis_password)


def test_serve_yaml_names_the_ingress_environment_it_needs(tmp_path: Path) -> None:
    from serve_apps.deploy import write_serve_config

    configs = configs_for_stack(_Stack(), [])
    text = write_serve_config(configs, 8000, tmp_path / "serve.yaml").read_text()
    assert text.startswith("# Freshline serving, ingress 'haproxy-throughput'")
    assert "RAY_SERVE_ENABLE_HA_PROXY=1 RAY_SERVE_THROUGHPUT_OPTIMIZED=1" in text
    plain = write_serve_config(configs, 8000, tmp_path / "p.yaml", ingress="proxy").read_text()
    assert "no RAY_SERVE_* variable" in plain


def test_serve_sheds_past_the_limits_with_retry_after() -> None:
    """The replica's admission is the config's limits, and Serve's own 503 carries Retry-After
    (the serve-overload drill's criterion, which a bare Serve 503 failed). Serve hands our
    handler max_in_flight + max_queued at once, so our adaptive gate sees a request on arrival
    instead of after a wait in Serve's queue."""
    from serve_apps.app import build_app

    limits = Limits(max_in_flight=12, max_queued=5, retry_after_s=3)
    config = ServingConfig(
        region="us-east",
        topology=default_topology(),
        redis_password=SecretStr("p"),
        limits=limits,
    )
    # Application has no public accessor for its deployment's options in Ray 2.60.
    deployment = build_app({"config": config.model_dump(mode="json")})._bound_deployment
    assert deployment.max_ongoing_requests == 12 + 5
    assert deployment.max_queued_requests == 5
    assert deployment.backpressure_config.status_code == 503
    assert deployment.backpressure_config.retry_after_s == 3.0


def test_a_region_that_asked_to_retry_later_is_left_alone_until_then() -> None:
    seen: list[str] = []
    east_full = True

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path.split("/")[1])
        if request.url.path.startswith("/us-east") and east_full:
            return httpx.Response(503, headers={"retry-after": "2"}, text="backpressure")
        return httpx.Response(200, content=orjson.dumps(OK))

    clock = FakeClock()
    client = _client(handler, clock)
    for _ in range(3):  # within the 2 s: us-east is not asked again, eu-west answers
        client.get_features({"user": ["u_1"]}, ["v:f"])
    assert seen == ["us-east", "eu-west", "eu-west", "eu-west"]
    clock.advance(2.1)
    east_full = False
    client.get_features({"user": ["u_1"]}, ["v:f"])
    assert seen[-1] == "us-east", "asked again once its Retry-After is over"


def test_when_every_region_asked_to_wait_the_call_fails_at_once() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        return httpx.Response(503, headers={"retry-after": "5"}, text="backpressure")

    client = _client(handler, FakeClock())
    with pytest.raises(FeatureServiceUnavailable):
        client.get_features({"user": ["u_1"]}, ["v:f"])
    assert len(calls) == 2  # each region once, no retry round against regions that said wait
    with pytest.raises(FeatureServiceUnavailable, match="retry later"):
        client.get_features({"user": ["u_1"]}, ["v:f"])
    assert len(calls) == 2


def test_the_deployment_fingerprint_changes_with_any_config_and_only_then() -> None:
    """``deploy`` skips a redeploy whose fingerprint is the running one: it must differ whenever
    the replicas would run something else."""
    configs = configs_for_stack(_Stack(), [ApiKey.from_raw("c", "raw-key")])
    same = configs_for_stack(_Stack(), [ApiKey.from_raw("c", "raw-key")])
    assert deployment_fingerprint(configs) == deployment_fingerprint(same)
    tighter = [c.model_copy(update={"limits": Limits(max_in_flight=8)}) for c in configs]
    other_key = configs_for_stack(_Stack(), [ApiKey.from_raw("c", "another-key")])
    fingerprints = {
        deployment_fingerprint(configs),
        deployment_fingerprint(tighter),
        deployment_fingerprint(other_key),
        deployment_fingerprint(configs[:1]),
    }
    assert len(fingerprints) == 4
    rotated = configs_for_stack(_Stack(), [], password=SecretStr("new"))
    old = configs_for_stack(_Stack(), [], password=SecretStr("old"))
    assert deployment_fingerprint(rotated) != deployment_fingerprint(old)


def test_a_rotated_password_file_changes_the_fingerprint(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets.json"
    secrets.write_text('{"redis_reader_password": "old"}')
    configs = [
        c.model_copy(update={"redis_password_file": secrets})
        for c in configs_for_stack(_Stack(), [])
    ]
    before = deployment_fingerprint(configs)
    secrets.write_text('{"redis_reader_password": "new"}')
    assert deployment_fingerprint(configs) != before
