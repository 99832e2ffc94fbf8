"""Serving's configuration decides each timeout and breaker default once: the read path, the
Redis clients and the breakers all take theirs from it."""

from __future__ import annotations

import pytest

from regions.redis_store import DEFAULT_CONNECT_TIMEOUT_S
from regions.resilience import BreakerPolicy, CircuitBreaker, Deadline
from serve_apps.config import BreakerSettings, Limits, StoreTimeouts
from serve_apps.wiring import build_chain, redis_store
from tests.unit.serve_apps.fakes import FakeClock as Clock
from tests.unit.serve_apps.fakes import config

KEYS = 40


def test_the_serving_breaker_and_the_primitive_have_the_same_defaults() -> None:
    assert BreakerSettings().policy() == BreakerPolicy()
    # docs/serving.md: a failing store is skipped for 2 s.
    assert CircuitBreaker("redis-us-east", Clock()).policy.open_s == 2.0


def test_a_changed_breaker_setting_reaches_every_store_of_the_chain() -> None:
    cfg = config(breaker=BreakerSettings(open_s=7.5, min_calls=3))
    chain = build_chain(cfg, Clock(), dynamo=lambda region: object())
    assert len(chain.steps) == 2 * len(cfg.topology.regions)
    assert {(s.breaker.policy.open_s, s.breaker.policy.min_calls) for s in chain.steps} == {
        (7.5, 3)
    }


@pytest.mark.parametrize(
    ("keys", "remaining_s", "home", "want"),
    [
        (0, 1.0, True, 0.05),  # the base cap
        (KEYS, 1.0, True, 0.05 + KEYS * 0.001),  # the cap grows with the keys read
        (KEYS, 0.2, True, 0.2 * 0.34),  # a home step's share of a short budget
        (KEYS, 0.1, False, 0.1 * 0.5),  # a remote step's share
    ],
)
def test_a_redis_read_gets_its_cap_or_its_share_of_the_budget(
    keys: int, remaining_s: float, home: bool, want: float
) -> None:
    assert StoreTimeouts().redis_read_s(keys, remaining_s, home=home) == pytest.approx(want)


@pytest.mark.parametrize("remaining_s", [0.05, 0.2, 5.0])
def test_the_chain_gives_each_redis_read_the_configured_timeout(remaining_s: float) -> None:
    timeouts = StoreTimeouts(redis_s=0.07, redis_per_key_s=0.003, local_share=0.3, remote_share=0.6)
    clock = Clock()
    chain = build_chain(config(timeouts=timeouts), clock, dynamo=lambda region: object())
    deadline = Deadline(remaining_s, clock)
    redis_steps = [s for s in chain.steps if s.store.name.startswith("redis-")]
    home, remote = redis_steps[0], redis_steps[1]
    assert home.store.name == "redis-us-east" and remote.store.name == "redis-eu-west"
    for step, is_home in ((home, True), (remote, False)):
        given = deadline.step_timeout(step.cap_s, step.per_key_s, KEYS, step.share)
        assert given == pytest.approx(timeouts.redis_read_s(KEYS, remaining_s, home=is_home))


def test_redis_sockets_get_backstops_derived_from_the_config() -> None:
    cfg = config(
        timeouts=StoreTimeouts(redis_s=0.05),
        limits=Limits(max_deadline_ms=3_000, max_in_flight=4),
        redis_max_connections=9,
    )
    limits = cfg.redis_timeouts
    assert (limits.connect_s, limits.socket_s, limits.max_connections) == (
        DEFAULT_CONNECT_TIMEOUT_S,
        3.0,
        9,
    )
    # A base cap above the backstops wins: no socket limit cuts a read the chain still waits for.
    slow = config(timeouts=StoreTimeouts(redis_s=4.0), limits=Limits(max_deadline_ms=3_000))
    assert (slow.redis_timeouts.connect_s, slow.redis_timeouts.socket_s) == (4.0, 4.0)


def test_the_serving_redis_client_uses_the_configured_backstops() -> None:
    cfg = config(limits=Limits(max_deadline_ms=2_500, max_in_flight=4), redis_max_connections=7)
    store = redis_store(cfg, cfg.topology.get("us-east"), Clock())
    pool = store._reader._client.connection_pool
    assert pool.connection_kwargs["socket_timeout"] == cfg.redis_timeouts.socket_s == 2.5
    assert pool.connection_kwargs["socket_connect_timeout"] == cfg.redis_timeouts.connect_s
    assert pool.max_connections == 7


def test_the_stack_the_serve_yaml_and_a_bare_config_deploy_the_same_number_of_replicas() -> None:
    """`serve up` (RaySettings), a written Serve YAML (configs_for_stack) and a ServingConfig
    built by hand must agree, or a user deploying the YAML gets fewer replicas than the stack."""
    import inspect

    from cluster.settings import RaySettings
    from serve_apps.config import ServingConfig
    from serve_apps.defaults import DEFAULT_REPLICAS
    from serve_apps.deploy import configs_for_stack

    assert DEFAULT_REPLICAS >= 2, "one replica would make every replica loss a cold start"
    assert RaySettings().serve_replicas == DEFAULT_REPLICAS
    assert ServingConfig.model_fields["replicas"].default == DEFAULT_REPLICAS
    default = inspect.signature(configs_for_stack).parameters["replicas"].default
    assert default == DEFAULT_REPLICAS
