"""boto3 clients for a region's DynamoDB endpoint.

Local endpoints (moto) accept any credentials; with ``endpoint_url`` removed and the usual boto3
credential chain, the same code talks to real AWS.
"""

from __future__ import annotations

from typing import Any

from regions.config import RegionConfig

LOCAL_CREDENTIALS = {"aws_access_key_id": "freshline", "aws_secret_access_key": "freshline"}


def dynamodb_client(region: RegionConfig, timeout_s: float = 2.0) -> Any:
    """A DynamoDB client for ``region`` with short timeouts and no hidden retries."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1})
    return boto3.client(
        "dynamodb",
        endpoint_url=region.dynamodb_endpoint_url,
        region_name=region.aws_region,
        config=config,
        **LOCAL_CREDENTIALS,
    )
