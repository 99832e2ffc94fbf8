from __future__ import annotations

from typing import Any

import pytest

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
