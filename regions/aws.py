"""boto3 clients for a region's DynamoDB endpoint.

Local endpoints (moto) accept any credentials; with ``endpoint_url`` removed and the usual boto3
credential chain (``credentials=None``), the same code talks to real AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from regions.config import RegionConfig

LOCAL_CREDENTIALS = {"aws_access_key_id": "freshline", "aws_secret_access_key": "freshline"}
# botocore's own default: enough for a writer; a caller with more threads passes its own.
DEFAULT_POOL_SIZE = 10


def dynamodb_client(
    region: RegionConfig,
    timeout_s: float = 2.0,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_attempts: int = 1,
    credentials: Mapping[str, str] | None = LOCAL_CREDENTIALS,
) -> Any:
    """A DynamoDB client for ``region`` with short timeouts and no hidden retries.

    ``max_attempts`` counts the first call: 1 leaves every retry to the caller's policy. (botocore's
    own ``max_attempts`` key counts retries only, so its 1 would mean one hidden retry.)
    ``credentials`` holds ``aws_access_key_id`` / ``aws_secret_access_key`` (either may be
    missing); None uses boto3's credential chain.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"total_max_attempts": max_attempts},
        max_pool_connections=pool_size,
    )
    return boto3.client(
        "dynamodb",
        endpoint_url=region.dynamodb_endpoint_url,
        region_name=region.aws_region,
        config=config,
        **dict(credentials or {}),
    )
