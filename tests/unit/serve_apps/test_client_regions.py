"""FeatureClient with one URL per region (each region's front door): a region whose front door is
unreachable is skipped for the next one's own URL, and a URL is required for every region."""

from __future__ import annotations

import httpx
import orjson
import pytest

from regions.resilience import ExponentialBackoff, no_jitter
from serve_apps.client import FeatureClient
from tests.unit.serve_apps.fakes import FakeClock

URLS = {"us-east": "http://door-us:8101", "eu-west": "http://door-eu:8102/"}


def test_each_region_is_asked_at_its_own_url_and_a_dead_one_is_skipped() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.path}")
        if request.url.host == "door-us":
            raise httpx.ConnectError("refused")
        body = {"region": "eu-west", "results": []}
        return httpx.Response(200, content=orjson.dumps(body))

    clock = FakeClock()
    client = FeatureClient(
        URLS,
        "key",
        regions=("us-east", "eu-west"),
        timeout_s=1.0,
        backoff=ExponentialBackoff(base_s=0.01, cap_s=0.01, jitter=no_jitter),
        monotonic=clock,
        sleep=clock.advance,
        transport=httpx.MockTransport(handler),
    )
    assert client.get_features({"user": ["u_1"]}, ["v:f"])["region"] == "eu-west"
    assert seen == ["door-us/us-east/v1/features", "door-eu/eu-west/v1/features"]


def test_a_region_without_a_url_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="no base URL for region"):
        FeatureClient({"us-east": "http://door-us:8101"}, "key", regions=("us-east", "eu-west"))
