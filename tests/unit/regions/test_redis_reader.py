"""The asyncio tile reader's deadline: an answer is never a timeout; a silence is abandoned."""

from __future__ import annotations

import asyncio
import time

import pytest

from regions.exceptions import AbandonedCall
from regions.redis_store import AsyncRedisTileReader
from regions.resilience import Deadline
from tests.unit.regions.fakes import BlockingRedisClient


def test_a_reply_that_lands_with_the_timer_is_an_answer_not_a_timeout() -> None:
    """A lagging loop runs an expired timer and the reply that arrived meanwhile in the same
    turn. Calling that a timeout recorded failures on a healthy Redis and opened its breaker."""
    reader = AsyncRedisTileReader(BlockingRedisClient(block_s=0.05), "redis-us-east")  # type: ignore[arg-type]
    got = asyncio.run(reader.get_all(["fl:k"], Deadline(0.01, time.monotonic)))
    assert got == {"fl:k": {}}


def test_a_silent_call_is_abandoned_with_a_handle_on_its_late_answer() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        reader = AsyncRedisTileReader(BlockingRedisClient(gate=gate), "redis-us-east")  # type: ignore[arg-type]
        with pytest.raises(AbandonedCall) as caught:
            await reader.get_all(["fl:k"], Deadline(0.01, time.monotonic))
        pending = caught.value.pending
        assert not pending.done(), "abandoned, not cancelled"
        gate.set()
        assert await pending == [{}]

    asyncio.run(scenario())
