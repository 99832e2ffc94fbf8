"""A region's real fallback chain for tests that read through it without HTTP."""

from __future__ import annotations

import time

from cluster.stack import Stack
from regions.aws import LOCAL_CREDENTIALS
from serve_apps.config import ApiKey, StoreTimeouts
from serve_apps.deploy import configs_for_stack
from serve_apps.fallback import FallbackChain
from serve_apps.wiring import build_chain


def region_chain(stack: Stack, region: str) -> FallbackChain:
    """``region``'s chain (its Redis, its DynamoDB, then the other region) as its Serve app
    builds it, with timeouts a loaded machine's moto can meet."""
    (config,) = [
        c
        for c in configs_for_stack(
            stack.settings,
            [ApiKey.from_raw("tests", "region-chain-key")],
            dynamodb_credentials=(
                LOCAL_CREDENTIALS["aws_access_key_id"],
                LOCAL_CREDENTIALS["aws_secret_access_key"],
            ),
            timeouts=StoreTimeouts(redis_s=1.0, dynamodb_s=5.0),  # moto is slow when loaded
        )
        if c.region == region
    ]
    return build_chain(config, time.monotonic)
