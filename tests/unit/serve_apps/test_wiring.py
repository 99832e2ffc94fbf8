from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr

from serve_apps.config import StoreTimeouts
from serve_apps.wiring import dynamo_factory
from tests.unit.serve_apps.fakes import config


def _access_key(client: Any) -> str | None:
    credentials = client._request_signer._credentials
    return None if credentials is None else str(credentials.access_key)


def test_serving_dynamodb_client_uses_serving_timeout_and_configured_credentials() -> None:
    serving = config(
        timeouts=StoreTimeouts(dynamodb_s=0.3),
        dynamodb_access_key_id=SecretStr("serving-key"),
        dynamodb_secret_access_key=SecretStr("serving-secret"),
    )
    region = serving.topology.get("eu-west")
    client = dynamo_factory(serving)(region)
    assert client.meta.config.read_timeout == 0.3
    assert client.meta.config.retries["total_max_attempts"] == 1  # the chain decides
    assert client.meta.endpoint_url == region.dynamodb_endpoint_url
    assert _access_key(client) == "serving-key"


def test_without_configured_credentials_serving_uses_the_boto3_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    serving = config()
    assert _access_key(dynamo_factory(serving)(serving.topology.get("us-east"))) == "from-env"


def test_one_client_per_region_is_made_once_and_shared() -> None:
    serving = config()
    make = dynamo_factory(serving)
    east, west = serving.topology.get("us-east"), serving.topology.get("eu-west")
    assert make(east) is make(east)
    assert make(east) is not make(west)
