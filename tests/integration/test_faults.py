"""The Redis stall injectors the drills rely on, against the stack's real Redis."""

from __future__ import annotations

import pytest
import redis

from chaos import faults
from cluster.stack import Stack

pytestmark = pytest.mark.integration


def test_debug_sleep_stalls_reads_and_its_exit_waits_until_redis_answers(stack: Stack) -> None:
    service = stack.service("redis-eu-west")
    admin, probe = service.admin_client(), service.admin_client()  # 2 s socket timeouts
    probe.set("fl:test:asleep", b"1")
    with faults.redis_asleep(admin, 3.0), pytest.raises(redis.TimeoutError):
        probe.get("fl:test:asleep")  # a read: the whole server is blocked, not only writes
    assert probe.get("fl:test:asleep") == b"1"  # the block's exit returned an answering server
    probe.delete("fl:test:asleep")


def test_client_pause_write_blocks_writes_and_lets_reads_through(stack: Stack) -> None:
    service = stack.service("redis-eu-west")
    admin, probe = service.admin_client(), service.admin_client()
    probe.set("fl:test:paused", b"before")
    with faults.redis_paused(admin, 10.0):
        assert probe.get("fl:test:paused") == b"before"
        with pytest.raises(redis.TimeoutError):
            probe.set("fl:test:paused", b"during")
    assert probe.set("fl:test:paused", b"after")  # UNPAUSEd on exit, well before the 10 s
    assert probe.get("fl:test:paused") == b"after"
    probe.delete("fl:test:paused")
