"""Pure aggregators, one per :class:`~features.catalog.Aggregation`, quix-style.

Each aggregator has ``initialize() -> S``, ``agg(state, value, event_time_ms, order) -> S``,
``merge(a, b) -> S`` and ``result(state) -> R``, plus ``dump``/``load`` to and from bytes so a
state can be stored as an absolute value (Redis, DynamoDB, changelog) and snapshotted. The same
objects run in the stream actors (fold events into tiles), in serving (merge tiles) and offline.

Invariants:

* ``merge`` is associative and commutative, and ``initialize()`` is its identity, so folding all
  events equals merging the folds of any partition of them into parts. For ``sum`` and ``mean``
  this holds up to floating-point rounding only; every path therefore merges tiles in ascending
  tile order starting from ``initialize()`` (``features.tile_groups.read_view``), which makes
  results bitwise equal across paths. ``min``, ``max`` and ``distinct_count`` merges are also
  idempotent; the others are not (merging a tile twice double counts), so stores keep absolute
  tile values, never deltas.
* ``agg`` may mutate and return its ``state`` (sketches would otherwise be copied per event):
  callers must use the returned state. ``merge`` never mutates its inputs.
* ``order`` is a monotone tiebreaker per entity (the Kafka offset): ``last`` and ``last_n`` pick
  the latest event by ``(event_time_ms, order)``; equal pairs can only be the same event.
* ``agg_seq`` (Python sequences, the stream actors' per-tile batch) gives exactly the state of
  folding ``agg`` over the sequence in order: sums are folded left to right with plain float
  additions (never ``sum()``, which compensates rounding from Python 3.12 on), extremes take the
  first extreme like the pairwise fold, ``last`` the latest copy on full ties, and
  ``distinct_count`` adds each distinct value once (adding a value twice changes no register).
* Values are finite (the event validator rejects NaN and infinities before aggregation).
* ``cusum`` depends on arrival order across *all* of an entity's events, so it has no merge
  (:class:`~features.exceptions.NotMergeable`) and is never tiled: one actor owns each entity's
  state and feeds it sequentially.
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from functools import reduce
from typing import Any, ClassVar, Generic, TypeVar

from features import codec
from features.catalog import Aggregation, Feature
from features.codec import Scalar
from features.cusum import CusumConfig, CusumLogic, CusumState
from features.errors import DataError
from features.exceptions import CorruptState, NotMergeable
from features.hll import HyperLogLog

S = TypeVar("S")
R = TypeVar("R")
LastState = tuple[int, int, Scalar] | None
MeanState = tuple[int, float]
LastNState = tuple[tuple[int, int, Scalar], ...]


class Aggregator(ABC, Generic[S, R]):
    """The four pure steps of one aggregation, plus sequence folding and byte (de)serialisation."""

    aggregation: ClassVar[Aggregation]

    @abstractmethod
    def initialize(self) -> S: ...

    @abstractmethod
    def agg(self, state: S, value: Scalar, event_time_ms: int, order: int) -> S: ...

    @abstractmethod
    def merge(self, a: S, b: S) -> S: ...

    @abstractmethod
    def result(self, state: S) -> R: ...

    @abstractmethod
    def dump(self, state: S) -> bytes: ...

    @abstractmethod
    def load(self, data: bytes) -> S: ...

    def agg_seq(
        self, state: S, values: Sequence[Any], times: Sequence[int], orders: Sequence[int]
    ) -> S:
        """Fold equal-length sequences in order; equal to calling ``agg`` once per element."""
        for value, ts, order in zip(values, times, orders, strict=True):
            state = self.agg(state, value, ts, order)
        return state


def _num(value: Scalar) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _fold_sum(start: float, values: Sequence[Any]) -> float:
    """``start + float(v0) + float(v1) + ...`` left to right, checking each value is a number."""
    return reduce(operator.add, map(_num, values), start)


def _load(data: bytes, kinds: tuple[type, ...], what: str) -> Any:
    """Decode a stored state and check its JSON type (bools are never a valid state)."""
    value = codec.decode(data)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise CorruptState(f"stored {what} state has type {type(value).__name__}")
    return value


class CountAgg(Aggregator[int, int]):
    aggregation = Aggregation.COUNT

    def initialize(self) -> int:
        return 0

    def agg(self, state: int, value: Scalar, event_time_ms: int, order: int) -> int:
        return state + 1

    def agg_seq(
        self, state: int, values: Sequence[Any], times: Sequence[int], orders: Sequence[int]
    ) -> int:
        return state + len(values)

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result(self, state: int) -> int:
        return state

    def dump(self, state: int) -> bytes:
        return codec.encode(state)

    def load(self, data: bytes) -> int:
        value: int = _load(data, (int,), "count")
        return value


class SumAgg(Aggregator[float, float]):
    """Sum as a float (int columns too: exact up to 2**53)."""

    aggregation = Aggregation.SUM

    def initialize(self) -> float:
        return 0.0

    def agg(self, state: float, value: Scalar, event_time_ms: int, order: int) -> float:
        return state + _num(value)

    def agg_seq(
        self, state: float, values: Sequence[Any], times: Sequence[int], orders: Sequence[int]
    ) -> float:
        return _fold_sum(state, values)

    def merge(self, a: float, b: float) -> float:
        return a + b

    def result(self, state: float) -> float:
        return state

    def dump(self, state: float) -> bytes:
        return codec.encode(state)

    def load(self, data: bytes) -> float:
        return float(_load(data, (int, float), "sum"))


class MeanAgg(Aggregator[MeanState, float | None]):
    """State ``(count, sum)``; the result is ``None`` for an empty window."""

    aggregation = Aggregation.MEAN

    def initialize(self) -> MeanState:
        return (0, 0.0)

    def agg(self, state: MeanState, value: Scalar, event_time_ms: int, order: int) -> MeanState:
        return (state[0] + 1, state[1] + _num(value))

    def agg_seq(
        self, state: MeanState, values: Sequence[Any], times: Sequence[int], orders: Sequence[int]
    ) -> MeanState:
        return (state[0] + len(values), _fold_sum(state[1], values))

    def merge(self, a: MeanState, b: MeanState) -> MeanState:
        return (a[0] + b[0], a[1] + b[1])

    def result(self, state: MeanState) -> float | None:
        return state[1] / state[0] if state[0] else None

    def dump(self, state: MeanState) -> bytes:
        return codec.encode(list(state))

    def load(self, data: bytes) -> MeanState:
        value = _load(data, (list,), "mean")
        count, total = value if len(value) == 2 else (None, None)
        if isinstance(count, bool) or not isinstance(count, int) or isinstance(total, bool):
            raise CorruptState("stored mean state is not [count, sum]")
        if not isinstance(total, int | float):
            raise CorruptState("stored mean state is not [count, sum]")
        return (count, float(total))


class _ExtremumAgg(Aggregator[float | None, float | None]):
    """Min or max; ``None`` is the empty state. Idempotent merge."""

    def initialize(self) -> float | None:
        return None

    _pick: Callable[[float, float], float]
    _pick_many: Callable[[Iterable[float]], float]

    def agg(
        self, state: float | None, value: Scalar, event_time_ms: int, order: int
    ) -> float | None:
        number = _num(value)
        return number if state is None else self._pick(state, number)

    def merge(self, a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return b if a is None else a
        return self._pick(a, b)

    def agg_seq(
        self,
        state: float | None,
        values: Sequence[Any],
        times: Sequence[int],
        orders: Sequence[int],
    ) -> float | None:
        if not values:
            return state
        # The builtin keeps the first of equal extremes, as the pairwise fold does.
        best: float = self._pick_many(map(_num, values))
        return best if state is None else self._pick(state, best)

    def result(self, state: float | None) -> float | None:
        return state

    def dump(self, state: float | None) -> bytes:
        return codec.encode(state)

    def load(self, data: bytes) -> float | None:
        value = _load(data, (int, float, type(None)), self.aggregation.value)
        return None if value is None else float(value)


def _min_of(values: Iterable[float]) -> float:
    return min(values)


def _max_of(values: Iterable[float]) -> float:
    return max(values)


class MinAgg(_ExtremumAgg):
    aggregation = Aggregation.MIN
    _pick = staticmethod(min)
    _pick_many = staticmethod(_min_of)


class MaxAgg(_ExtremumAgg):
    aggregation = Aggregation.MAX
    _pick = staticmethod(max)
    _pick_many = staticmethod(_max_of)


def _later(a: tuple[int, int, Scalar], b: tuple[int, int, Scalar]) -> tuple[int, int, Scalar]:
    """The later of two ``(time, order, value)`` entries; ties broken by the encoded value so
    the choice does not depend on argument order (commutativity)."""
    if (a[0], a[1]) != (b[0], b[1]):
        return a if (a[0], a[1]) > (b[0], b[1]) else b
    return a if codec.encode(a[2]) >= codec.encode(b[2]) else b


def _entry(value: Any) -> tuple[int, int, Scalar]:
    if not isinstance(value, list) or len(value) != 3:
        raise CorruptState(f"stored entry {value!r} is not [time, order, value]")
    ts, order, scalar = value
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (ts, order)):
        raise CorruptState(f"stored entry {value!r} has non-integer time or order")
    if isinstance(scalar, list | dict):
        raise CorruptState(f"stored entry {value!r} holds a non-scalar value")
    return (ts, order, scalar)


class LastAgg(Aggregator[LastState, Scalar]):
    """The value of the latest event by ``(event_time, order)``; ``None`` when empty."""

    aggregation = Aggregation.LAST

    def initialize(self) -> LastState:
        return None

    def agg(self, state: LastState, value: Scalar, event_time_ms: int, order: int) -> LastState:
        # ">=": re-applying the latest event (same time and order) keeps the newer copy.
        if state is None or (event_time_ms, order) >= (state[0], state[1]):
            return (event_time_ms, order, value)
        return state

    def agg_seq(
        self, state: LastState, values: Sequence[Any], times: Sequence[int], orders: Sequence[int]
    ) -> LastState:
        if len(values) != len(times) or len(values) != len(orders):
            raise DataError("agg_seq needs sequences of equal length")
        if not values:
            return state
        # max() keeps the first of equal keys, so scan backwards: the latest copy wins full ties.
        best = max(range(len(values) - 1, -1, -1), key=lambda i: (times[i], orders[i]))
        return self.agg(state, values[best], times[best], orders[best])

    def merge(self, a: LastState, b: LastState) -> LastState:
        if a is None or b is None:
            return b if a is None else a
        return _later(a, b)

    def result(self, state: LastState) -> Scalar:
        return None if state is None else state[2]

    def dump(self, state: LastState) -> bytes:
        return codec.encode(None if state is None else list(state))

    def load(self, data: bytes) -> LastState:
        value = codec.decode(data)
        return None if value is None else _entry(value)


class LastNAgg(Aggregator[LastNState, list[Scalar]]):
    """The ``n`` latest ``(event_time, order, value)`` entries, kept oldest first; the result
    lists their values newest first."""

    aggregation = Aggregation.LAST_N

    def __init__(self, n: int) -> None:
        if n < 1:
            raise DataError(f"last_n needs n >= 1, got {n}")
        self.n = n

    def initialize(self) -> LastNState:
        return ()

    def agg(
        self,
        state: LastNState,
        value: Scalar,
        event_time_ms: int,
        order: int,
    ) -> LastNState:
        return self.merge(state, ((event_time_ms, order, value),))

    def merge(self, a: LastNState, b: LastNState) -> LastNState:
        merged = sorted((*a, *b), key=lambda e: (e[0], e[1], codec.encode(e[2])))
        return tuple(merged[-self.n :])

    def result(self, state: LastNState) -> list[Scalar]:
        return [entry[2] for entry in reversed(state)]

    def dump(self, state: LastNState) -> bytes:
        return codec.encode([list(entry) for entry in state])

    def load(self, data: bytes) -> LastNState:
        value = _load(data, (list,), "last_n")
        return self.merge((), tuple(_entry(entry) for entry in value))


class DistinctCountAgg(Aggregator[HyperLogLog, int]):
    """Approximate distinct count (HyperLogLog of ``str(value)``); idempotent merge."""

    aggregation = Aggregation.DISTINCT_COUNT

    def __init__(self, precision: int) -> None:
        self.precision = precision

    def initialize(self) -> HyperLogLog:
        return HyperLogLog(self.precision)

    def agg(self, state: HyperLogLog, value: Scalar, event_time_ms: int, order: int) -> HyperLogLog:
        state.add(value if isinstance(value, str) else str(value))
        return state

    def agg_seq(
        self,
        state: HyperLogLog,
        values: Sequence[Any],
        times: Sequence[int],
        orders: Sequence[int],
    ) -> HyperLogLog:
        if len(values) != len(times) or len(values) != len(orders):
            raise DataError("agg_seq needs sequences of equal length")
        # A register only ever takes the max rank, so a repeated value changes nothing.
        for text in dict.fromkeys(v if isinstance(v, str) else str(v) for v in values):
            state.add(text)
        return state

    def merge(self, a: HyperLogLog, b: HyperLogLog) -> HyperLogLog:
        return a.merge(b)

    def result(self, state: HyperLogLog) -> int:
        return state.cardinality()

    def dump(self, state: HyperLogLog) -> bytes:
        return state.to_bytes()

    def load(self, data: bytes) -> HyperLogLog:
        return HyperLogLog.from_bytes(data)


class CusumAgg(Aggregator[CusumState, float]):
    """Sequential CUSUM score (see ``features.cusum``). Not mergeable, so never tiled."""

    aggregation = Aggregation.CUSUM

    def __init__(self, config: CusumConfig) -> None:
        self.config = config

    def initialize(self) -> CusumState:
        return CusumState()

    def agg(self, state: CusumState, value: Scalar, event_time_ms: int, order: int) -> CusumState:
        CusumLogic(self.config, state).update(_num(value))
        return state

    def agg_seq(
        self,
        state: CusumState,
        values: Sequence[Any],
        times: Sequence[int],
        orders: Sequence[int],
    ) -> CusumState:
        CusumLogic(self.config, state).update_many(map(_num, values))
        return state

    def merge(self, a: CusumState, b: CusumState) -> CusumState:
        # Two partial CUSUM runs cannot be combined: each sum depends on every earlier value
        # in arrival order, and the reference (mean/std) is learned from the first values.
        raise NotMergeable("cusum is sequential per entity; it has no merge and is not tiled")

    def result(self, state: CusumState) -> float:
        return state.last_score

    def dump(self, state: CusumState) -> bytes:
        return codec.encode(state.to_dict())

    def load(self, data: bytes) -> CusumState:
        return CusumState.from_dict(_load(data, (dict,), "cusum"))


def aggregator_for(feature: Feature) -> Aggregator[Any, Any]:
    """The aggregator of a catalog feature, configured with its parameters."""
    agg = feature.aggregation
    if agg is Aggregation.DISTINCT_COUNT:
        return DistinctCountAgg(feature.hll_precision)
    if agg is Aggregation.LAST_N:
        return LastNAgg(feature.n or 1)
    if agg is Aggregation.CUSUM:
        return CusumAgg(
            CusumConfig(feature.cusum_drift, feature.cusum_threshold, feature.cusum_warmup)
        )
    return _SIMPLE[agg]()


_SIMPLE: dict[Aggregation, type[Aggregator[Any, Any]]] = {
    Aggregation.COUNT: CountAgg,
    Aggregation.SUM: SumAgg,
    Aggregation.MEAN: MeanAgg,
    Aggregation.MIN: MinAgg,
    Aggregation.MAX: MaxAgg,
    Aggregation.LAST: LastAgg,
}
