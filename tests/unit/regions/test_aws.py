from __future__ import annotations

from typing import Any

import boto3
import pytest
from pydantic import ValidationError

from regions.aws import LOCAL_CREDENTIALS, dynamodb_client
from regions.config import default_topology


def _access_key(client: Any) -> str | None:
    credentials = client._request_signer._credentials
    return None if credentials is None else str(credentials.access_key)


def test_client_applies_timeouts_pool_and_attempts() -> None:
    region = default_topology().get("us-east")
    client = dynamodb_client(region, 0.25, pool_size=3, max_attempts=2)
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (0.25, 0.25)
    assert config.max_pool_connections == 3
    assert config.retries["total_max_attempts"] == 2
    assert client.meta.endpoint_url == region.dynamodb_endpoint_url


def test_default_client_has_no_hidden_retries_and_local_credentials() -> None:
    client = dynamodb_client(default_topology().get("eu-west"))
    assert client.meta.config.retries["total_max_attempts"] == 1
    assert _access_key(client) == LOCAL_CREDENTIALS["aws_access_key_id"]


def test_given_credentials_win_and_none_means_the_boto3_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-env")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-env-secret")
    region = default_topology().get("us-east")
    given = {"aws_access_key_id": "given", "aws_secret_access_key": "given-secret"}
    assert _access_key(dynamodb_client(region, credentials=given)) == "given"
    assert _access_key(dynamodb_client(region, credentials=None)) == "from-env"


def test_a_region_on_real_dynamodb_has_no_endpoint_and_uses_the_credential_chain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-role")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-role-secret")
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # boto3 caches the chain's answer
    region = default_topology(dynamodb_mode="aws").get("eu-west")
    client = dynamodb_client(region)
    assert client.meta.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"
    assert _access_key(client) == "from-role"


def test_the_local_mode_stays_the_default() -> None:
    region = default_topology().get("us-east")
    assert region.dynamodb_mode == "local"
    assert dynamodb_client(region).meta.endpoint_url == region.dynamodb_endpoint_url


def test_an_unknown_dynamodb_mode_is_refused() -> None:
    with pytest.raises(ValidationError, match="'local' or 'aws'"):
        default_topology(dynamodb_mode="cloud")  # type: ignore[arg-type]
