"""Fixtures of the DynamoDB writer tests: an in-process moto (unit tests only; the integration
suite runs ``moto_server`` as each region's endpoint)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from regions.aws import LOCAL_CREDENTIALS
from regions.dynamodb_store import create_online_table


@pytest.fixture(scope="module")
def moto_client() -> Iterator[Any]:
    import boto3
    from moto import mock_aws

    with mock_aws():
        yield boto3.client(
            "dynamodb",
            region_name="us-east-1",
            **LOCAL_CREDENTIALS,
        )


@pytest.fixture
def table(moto_client: Any) -> str:
    name = f"online_{uuid.uuid4().hex[:8]}"
    create_online_table(moto_client, name)
    return name
