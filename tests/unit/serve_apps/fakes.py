"""Fakes for the serving layer: a manual clock, in-memory tile stores that can be broken, and a
helper that fills stores with real tiles from the partition processor."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import SecretStr

from actors.processor import PartitionProcessor, RawRecord
from features.catalog import Catalog
from features.demo import SOURCE
from features.errors import StoreTimeout, StoreUnavailable
from regions.config import default_topology
from regions.tiles import TileWrite
from serve_apps.config import ApiKey, Limits, Scope, ServingConfig

READ_KEY = "fl_test_read_key"
ADMIN_KEY = "fl_test_admin_key"
T0 = 1_764_000_000_000


@dataclass
class FakeClock:
    """Monotonic seconds and wall milliseconds that move only when a test says so."""

    t: float = 1000.0
    wall: int = T0

    def __call__(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.wall += int(seconds * 1000)


@dataclass
class FakeStore:
    """An in-memory store of ``key -> {field: payload}``. ``fail`` makes calls raise ``error``;
    ``calls`` logs the key lists of every call (one entry per round trip)."""

    name: str
    data: dict[str, dict[str, bytes]] = field(default_factory=dict)
    fail: bool = False
    error: type[Exception] = StoreUnavailable
    calls: list[list[str]] = field(default_factory=list)
    timeouts: list[float] = field(default_factory=list)
    delay_s: float = 0.0  # real seconds each call takes before it answers (or fails)
    in_flight: int = 0
    peak_in_flight: int = 0

    async def get_all(self, keys: Sequence[str], timeout_s: float) -> dict[str, dict[str, bytes]]:
        self.calls.append(list(keys))
        self.timeouts.append(timeout_s)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        if self.fail:
            raise self.error(f"{self.name} is down")
        return {key: dict(self.data.get(key, {})) for key in keys}

    def apply(self, writes: Iterable[TileWrite]) -> None:
        for w in writes:
            fields = self.data.setdefault(w.key, {})
            if w.value is None:
                fields.pop(w.field, None)
            else:
                fields[w.field] = w.value


def timeout_error() -> type[Exception]:
    return StoreTimeout


def config(**overrides: Any) -> ServingConfig:
    base: dict[str, Any] = {
        "region": "us-east",
        "topology": default_topology(),
        "redis_password": SecretStr("unused"),
        "api_keys": (
            ApiKey.from_raw("reader", READ_KEY),
            ApiKey.from_raw("ops", ADMIN_KEY, frozenset({Scope.ADMIN})),
        ),
        "limits": Limits(max_entities=10, max_body_bytes=4096, max_in_flight=4),
    }
    base.update(overrides)
    return ServingConfig(**base)


def event(seq: int, user: str, merchant: str, amount: float, t: int) -> dict[str, Any]:
    return {
        "event_id": f"e-{seq}",
        "seq": seq,
        "event_type": "card_tx",
        "user_id": user,
        "merchant_id": merchant,
        "amount": amount,
        "currency": "USD",
        "event_time_ms": t,
    }


def tiles_for(catalog: Catalog, events: Sequence[dict[str, Any]], now_ms: int) -> list[TileWrite]:
    """The tile writes the stream path produces for ``events`` (partition 0, offsets in order)."""
    processor = PartitionProcessor(catalog, SOURCE, 0, now_ms=lambda: now_ms)
    records = [RawRecord(i, e["user_id"].encode(), orjson.dumps(e)) for i, e in enumerate(events)]
    processor.process(records)
    return [c.write for c in processor.drain_changes()]
