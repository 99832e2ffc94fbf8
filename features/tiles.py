"""Two-level window math: fixed tiles (level one) merged into hopping-tail windows (level two).

All times are integer epoch milliseconds, UTC. Nothing here takes a ``datetime``, so there is no
naive/aware ambiguity to get wrong; catalogs convert ``timedelta`` with ``durations.to_ms``.

Tiles
-----
A tile of size ``T`` starting at ``s`` (``s % T == 0``) holds the events with
``s <= event_time < s + T``. ``tile_start(ts, T) = ts - ts % T`` (floor, also for negative times).

Tile-size rule (:func:`tile_ms_for`)
------------------------------------
The tile of a window ``W`` is the *finest* size in :data:`TILE_LADDER` that divides ``W`` into at
most :data:`MAX_TILES_PER_WINDOW` (60) tiles. A window with no such tile is refused (a catalog
error): it is not a whole multiple of any ladder size within 60 tiles (e.g. ``61s``, ``10m5s``).

=========  ======  =====  ===============================
window     tile    tiles  worst-case tail loss (T / W)
=========  ======  =====  ===============================
5m         10s     30     3.3 %
1h         1m      60     1.7 %
24h        1h      24     4.2 %
7d         4h      42     2.4 %
=========  ======  =====  ===============================

The ladder is coarse on purpose: every tile is one store field per (entity, feature), so a finer
tile costs write and read amplification. 7d uses 4h (42 tiles), not 1h (168 tiles), because a read
merges every covering tile and 168 fields per feature per request breaks the serving budget.

Tail semantics (the product promise)
------------------------------------
The value of a feature with window ``W`` and tile ``T`` *as of* ``t`` aggregates exactly the
events with::

    aligned_start(t) <= event_time <= t,   aligned_start(t) = tile_start(t, T) + T - W

so the window slides at its head (to the millisecond) and hops at its tail (once per tile,
Chronon-style). It is the merge of the ``W / T`` tiles returned by :func:`covering_tiles`, the last
of which (the *head tile*, the one containing ``t``) must hold only its events with
``event_time <= t``.

Error bound: the covered span ``[aligned_start, t]`` has length between ``W - T + 1ms`` and ``W``.
Compared with an ideal sliding window ``(t - W, t]`` the value misses at most the events in
``(t - W, aligned_start)``, a span shorter than one tile, and never includes an event outside the
ideal window. It is exact when ``t % T == T - 1`` (the last millisecond of a tile).

Events with ``event_time > t`` never count. Where that is exact:

* Offline backfill and test oracles build the head tile from the events with ``event_time <= t``
  (:func:`in_window` is the predicate), so they match the rule exactly.
* The serving path answers with ``as_of = request time`` and merges the stored tiles as they are;
  it cannot split the head tile. It matches the rule exactly as long as no stored event is stamped
  after the request time. The only such events are ones whose producer clock runs ahead (accepted
  up to the source's ``max_future_skew``); the stream actors should therefore apply a
  future-stamped event only once their clock reaches its event time. Serving does not answer
  ``as_of`` in the past: point-in-time values are the offline path's job.

A tile with start ``s`` contributes to the value as of every ``t`` in ``[s, s + W)``, so it may
expire at ``s + W`` (the stream actors' tile expiry and the stores' TTLs rely on this).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from features.durations import format_duration, to_ms
from features.errors import CatalogError

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

TILE_LADDER: tuple[int, ...] = (
    SECOND_MS,
    10 * SECOND_MS,
    MINUTE_MS,
    10 * MINUTE_MS,
    HOUR_MS,
    4 * HOUR_MS,
    DAY_MS,
)
"""Allowed tile sizes in milliseconds, finest first."""

MAX_TILES_PER_WINDOW = 60
"""Upper bound on the number of tiles one window read merges."""


def tile_ms_for(window_ms: int) -> int:
    """Tile size of a window, both in ms, by the rule in the module docstring."""
    if window_ms <= 0:
        raise CatalogError(f"a window must be positive, got {window_ms} ms")
    for tile_ms in TILE_LADDER:
        if window_ms % tile_ms == 0 and window_ms // tile_ms <= MAX_TILES_PER_WINDOW:
            return tile_ms
    ladder = ", ".join(format_duration(timedelta(milliseconds=t)) for t in TILE_LADDER)
    raise CatalogError(
        f"window {format_duration(timedelta(milliseconds=window_ms))} is not a multiple of any "
        f"tile size ({ladder}) within {MAX_TILES_PER_WINDOW} tiles"
    )


def tile_start(ts_ms: int, tile_ms: int) -> int:
    """Start of the tile containing ``ts_ms``; floor semantics, so also right for negative times."""
    return ts_ms - ts_ms % tile_ms


def window_start(as_of_ms: int, window_ms: int, tile_ms: int) -> int:
    """``aligned_start``: the earliest event time counted by the window as of ``as_of_ms``."""
    return tile_start(as_of_ms, tile_ms) + tile_ms - window_ms


def covering_tiles(as_of_ms: int, window_ms: int, tile_ms: int) -> range:
    """Starts of the ``window_ms // tile_ms`` tiles whose merge is the window as of ``as_of_ms``.

    Ascending; the last one is the head tile (it contains ``as_of_ms``). Merging states in this
    order is what makes floating-point results identical across the stream, serving and offline.
    """
    _check_spec(window_ms, tile_ms)
    return range(
        window_start(as_of_ms, window_ms, tile_ms), tile_start(as_of_ms, tile_ms) + 1, tile_ms
    )


def in_window(event_time_ms: int, as_of_ms: int, window_ms: int, tile_ms: int) -> bool:
    """Whether an event counts in the window as of ``as_of_ms`` (the oracle's predicate)."""
    return window_start(as_of_ms, window_ms, tile_ms) <= event_time_ms <= as_of_ms


def _check_spec(window_ms: int, tile_ms: int) -> None:
    if tile_ms <= 0 or window_ms <= 0 or window_ms % tile_ms:
        raise CatalogError(f"window {window_ms} ms is not a positive multiple of tile {tile_ms} ms")


@dataclass(frozen=True, slots=True)
class TileSpec:
    """A window and its tile in ms. Invariant: ``window_ms`` is a positive multiple of the tile."""

    window_ms: int
    tile_ms: int

    def __post_init__(self) -> None:
        _check_spec(self.window_ms, self.tile_ms)

    @classmethod
    def for_window(cls, window: timedelta) -> TileSpec:
        """The spec chosen by :func:`tile_ms_for`; refused windows raise CatalogError."""
        window_ms = to_ms(window)
        return cls(window_ms=window_ms, tile_ms=tile_ms_for(window_ms))

    def covering_tiles(self, as_of_ms: int) -> range:
        return covering_tiles(as_of_ms, self.window_ms, self.tile_ms)

    def in_window(self, event_time_ms: int, as_of_ms: int) -> bool:
        return in_window(event_time_ms, as_of_ms, self.window_ms, self.tile_ms)
