"""The vector mirror: what changed is written once Redis answers, with backoff while it does not,
and everything is copied again when Redis came back empty."""

from __future__ import annotations

from collections.abc import Sequence

from actors.embedding_mirror import MirrorPolicy, VectorMirror
from features.errors import StoreTimeout, StoreUnavailable
from regions.resilience import ExponentialBackoff, no_jitter


class Store:
    """A Redis of one version's vectors; ``fail`` counts the next calls to refuse."""

    def __init__(self) -> None:
        self.vectors: dict[str, bytes] = {}
        self.marker: str | None = None
        self.fail = 0
        self.calls = 0

    def _call(self) -> None:
        self.calls += 1
        if self.fail:
            self.fail -= 1
            raise StoreUnavailable("redis-us-east: Connection refused")

    def write(self, vectors: dict[str, bytes | None]) -> bool:
        self._call()
        ready = self.marker == "ready"
        for entity, vector in vectors.items():
            if vector is None:
                self.vectors.pop(entity, None)
            else:
                self.vectors[entity] = vector
        return ready

    def begin_sync(self) -> None:
        self._call()
        self.marker = "syncing"

    def end_sync(self) -> bool:
        self._call()
        if self.marker is None:
            return False
        self.marker = "ready"
        return True

    def restart_empty(self) -> None:
        self.vectors.clear()
        self.marker = None


class Index:
    def __init__(self) -> None:
        self.live: dict[str, bytes] = {}

    def live_ids(self) -> list[str]:
        return list(self.live)

    def vectors(self, ids: Sequence[str]) -> dict[str, bytes | None]:
        return {i: self.live.get(i) for i in ids}


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


POLICY = MirrorPolicy(ExponentialBackoff(0.1, 10.0, jitter=no_jitter), check_s=5.0, sync_chunk=2)


def _mirror() -> tuple[VectorMirror, Store, Index, Clock]:
    store, clock = Store(), Clock()
    return VectorMirror(store, clock, POLICY), store, Index(), clock


def test_the_first_flush_copies_everything_to_an_empty_redis_then_only_what_changed() -> None:
    mirror, store, index, _ = _mirror()
    index.live = {f"e{i}": bytes([i]) for i in range(5)}
    mirror.flush(index)
    assert (store.vectors, store.marker, mirror.state) == (index.live, "ready", "current")
    index.live["e9"] = b"\x09"
    del index.live["e0"]
    mirror.touched(["e9", "e0"])
    mirror.flush(index)
    assert store.vectors == index.live


def test_a_redis_outage_keeps_the_changes_and_retries_with_backoff() -> None:
    mirror, store, index, clock = _mirror()
    mirror.flush(index)  # in sync, marker ready
    store.fail = 3
    for i, wait in enumerate((0.1, 0.2, 0.4)):
        index.live[f"e{i}"] = b"x"
        mirror.touched([f"e{i}"])
        mirror.flush(index)  # fails: nothing raised to the actor's loop
        assert (mirror.state, mirror.failures, mirror.last_error) == (
            "retrying",
            i + 1,
            "StoreUnavailable",
        )
        calls = store.calls
        clock.t += wait - 0.01
        mirror.flush(index)  # still backing off: Redis is not asked
        assert store.calls == calls
        clock.t += 0.01
    assert mirror.pending == {"e0", "e1", "e2"}
    mirror.flush(index)  # Redis is back
    assert (store.vectors, mirror.state, mirror.pending) == (index.live, "current", set())


def test_a_redis_that_came_back_empty_is_copied_again_even_when_nothing_changes() -> None:
    mirror, store, index, clock = _mirror()
    index.live = {f"e{i}": bytes([i]) for i in range(5)}
    mirror.flush(index)
    store.restart_empty()
    clock.t += 4.9
    mirror.flush(index)  # idle and before the check: nothing asked
    assert store.vectors == {}
    clock.t += 0.1
    mirror.flush(index)
    assert (store.vectors, store.marker) == (index.live, "ready")


def test_a_copy_interrupted_by_a_failure_resumes_and_keeps_deletes() -> None:
    mirror, store, index, clock = _mirror()
    index.live = {f"e{i}": bytes([i]) for i in range(6)}
    mirror.flush(index)
    store.vectors["stale"] = b"s"  # deleted from the index while Redis was unreachable
    mirror.touched(["stale"])
    store.restart_empty()
    store.vectors["stale"] = b"s"
    store.fail = 0
    mirror.flush(index)  # marker missing: begins a copy
    assert store.marker == "ready" and "stale" not in store.vectors
    store.restart_empty()
    mirror.touched(["e1"])
    index.live["e1"] = b"\xff"
    original = store.write
    writes = 0

    def flaky(vectors: dict[str, bytes | None]) -> bool:
        nonlocal writes
        writes += 1
        if writes == 3:  # the copy's second chunk
            raise StoreTimeout("redis-us-east: no answer in time")
        return original(vectors)

    store.write = flaky  # type: ignore[method-assign]
    mirror.flush(index)
    assert (mirror.state, store.marker) == ("retrying", "syncing")
    clock.t += 1
    mirror.flush(index)
    assert (store.vectors, store.marker, mirror.state) == (index.live, "ready", "current")
