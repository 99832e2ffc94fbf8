"""Small fakes for the region store layer: a manual clock and an in-memory DynamoDB table."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeClock:
    """Monotonic seconds that move only when a test says so; ``sleep`` advances it and is logged."""

    t: float = 1000.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


@dataclass
class FakeDynamo:
    """One table keyed by (pk, sk). ``refuse`` says, per BatchWriteItem call, how many of its
    requests to hand back as UnprocessedItems (the last ones); calls past the list refuse none.
    ``fail`` maps a call index to an exception raised instead of answering."""

    table: str = "freshline_online"
    items: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    refuse: list[int] = field(default_factory=list)
    refuse_gets: list[int] = field(default_factory=list)
    fail: dict[int, Exception] = field(default_factory=dict)
    write_calls: list[list[dict[str, Any]]] = field(default_factory=list)
    get_calls: list[list[dict[str, Any]]] = field(default_factory=list)
    page_size: int = 1_000  # items per Scan page
    scan_calls: int = 0

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]:
        requests = kwargs["RequestItems"][self.table]
        call = len(self.write_calls)
        self.write_calls.append(requests)
        if call in self.fail:
            raise self.fail[call]
        assert len(requests) <= 25, "BatchWriteItem takes at most 25 requests"
        ids = [_id(r) for r in requests]
        assert len(set(ids)) == len(ids), "BatchWriteItem refuses duplicate keys"
        refused = self.refuse[call] if call < len(self.refuse) else 0
        kept, left = requests[: len(requests) - refused], requests[len(requests) - refused :]
        for request in kept:
            if "PutRequest" in request:
                self.items[_id(request)] = request["PutRequest"]["Item"]
            else:
                self.items.pop(_id(request), None)
        return {"UnprocessedItems": {self.table: left} if left else {}}

    def batch_get_item(self, **kwargs: Any) -> dict[str, Any]:
        keys = kwargs["RequestItems"][self.table]["Keys"]
        call = len(self.get_calls)
        self.get_calls.append(keys)
        assert len(keys) <= 100
        refused = self.refuse_gets[call] if call < len(self.refuse_gets) else 0
        served, left = keys[: len(keys) - refused], keys[len(keys) - refused :]
        found = [self.items[k] for k in map(_key_id, served) if k in self.items]
        unprocessed = {self.table: {"Keys": left}} if left else {}
        return {"Responses": {self.table: found}, "UnprocessedKeys": unprocessed}

    def query(self, **kwargs: Any) -> dict[str, Any]:
        pk = kwargs["ExpressionAttributeValues"][":pk"]["S"]
        rows = [item for (p, _), item in sorted(self.items.items()) if p == pk]
        return {"Items": rows}

    def scan(self, **kwargs: Any) -> dict[str, Any]:
        """Pages of ``page_size`` items in key order, resumed after ``ExclusiveStartKey``."""
        ordered = [item for _, item in sorted(self.items.items())]
        after = kwargs.get("ExclusiveStartKey")
        if after is not None:
            ordered = [i for i in ordered if _key_id(i) > _key_id(after)]
        page = ordered[: self.page_size]
        more = len(ordered) > self.page_size
        self.scan_calls += 1
        return {"Items": page, **({"LastEvaluatedKey": _only_key(page[-1])} if more else {})}

    def factory(self) -> Callable[[Any], FakeDynamo]:
        return lambda _region: self


def _only_key(item: dict[str, Any]) -> dict[str, Any]:
    return {"pk": item["pk"], "sk": item["sk"]}


def _key_id(key: dict[str, Any]) -> tuple[str, str]:
    return key["pk"]["S"], key["sk"]["S"]


def _id(request: dict[str, Any]) -> tuple[str, str]:
    if "PutRequest" in request:
        return _key_id(request["PutRequest"]["Item"])
    return _key_id(request["DeleteRequest"]["Key"])


class BlockingPipeline:
    """Queues nothing; ``execute`` holds the loop for ``block_s`` (a busy replica), then
    answers, or waits on ``gate`` for an answer that comes later (a slow store)."""

    def __init__(self, block_s: float, gate: asyncio.Event | None) -> None:
        self._block_s, self._gate = block_s, gate

    def hgetall(self, key: str) -> None:
        pass

    async def execute(self) -> list[Any]:
        time.sleep(self._block_s)
        if self._gate is not None:
            await self._gate.wait()
        return [{}]


class BlockingRedisClient:
    """Stands in for ``redis.asyncio.Redis``: every pipeline is a :class:`BlockingPipeline`."""

    def __init__(self, block_s: float = 0.0, gate: asyncio.Event | None = None) -> None:
        self.block_s, self.gate = block_s, gate

    def pipeline(self, transaction: bool) -> BlockingPipeline:
        return BlockingPipeline(self.block_s, self.gate)
