"""boto3 clients for a region's DynamoDB endpoint.

Local endpoints (moto) accept any credentials and are signed with :data:`LOCAL_CREDENTIALS`; a
region in ``dynamodb_mode="aws"`` has no endpoint URL and uses boto3's default credential chain
(environment, profile, instance or pod role), so the same code talks to real AWS.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from regions.config import RegionConfig

LOCAL_CREDENTIALS = {"aws_access_key_id": "freshline", "aws_secret_access_key": "freshline"}
# botocore's own default: enough for a writer; a caller with more threads passes its own.
DEFAULT_POOL_SIZE = 10
# The default for ``credentials``: whatever the region's mode implies (see region_credentials).
RegionDefault = Literal["region"]


def region_credentials(region: RegionConfig) -> Mapping[str, str] | None:
    """Local credentials for a local endpoint; None (boto3's chain) against real DynamoDB."""
    return LOCAL_CREDENTIALS if region.dynamodb_mode == "local" else None


def dynamodb_client(
    region: RegionConfig,
    timeout_s: float = 2.0,
    *,
    pool_size: int = DEFAULT_POOL_SIZE,
    max_attempts: int = 1,
    credentials: Mapping[str, str] | RegionDefault | None = "region",
) -> Any:
    """A DynamoDB client for ``region`` with short timeouts and no hidden retries.

    ``max_attempts`` counts the first call: 1 leaves every retry to the caller's policy. (botocore's
    own ``max_attempts`` key counts retries only, so its 1 would mean one hidden retry.)
    ``credentials`` holds ``aws_access_key_id`` / ``aws_secret_access_key`` (either may be
    missing); None uses boto3's credential chain; the default follows the region's mode.
    """
    if isinstance(credentials, str):  # the "region" default
        credentials = region_credentials(region)
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
        # None: boto3 resolves the real regional endpoint from region_name.
        endpoint_url=region.dynamodb_endpoint_url if region.dynamodb_mode == "local" else None,
        region_name=region.aws_region,
        config=config,
        **dict(credentials or {}),
    )
