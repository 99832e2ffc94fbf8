"""Two-sided tabular CUSUM change-point detector, per entity, in arrival order.

Config and logic follow bytewax's split: :class:`CusumConfig` is an immutable config whose
:meth:`~CusumConfig.build` returns a :class:`CusumLogic`; all mutable state lives in
:class:`CusumState`, a small dataclass with ``to_dict``/``from_dict``, so a snapshot is just that
dict and resuming from it continues exactly where the snapshot was taken.

Algorithm, for each value ``x`` in arrival order:

1. *Warm-up*: the first ``warmup`` values only feed a Welford running mean/variance (the
   reference). They score 0 and never alarm.
2. *Detect*: with the frozen reference ``mu``, ``sd`` (sample std, floored at ``min_std`` so a
   constant warm-up cannot divide by zero), ``z = (x - mu) / sd`` and::

       S+ = max(0, S+ + z - k)      S- = max(0, S- - z - k)      score = max(S+, S-)

   ``score`` is in standard-deviation units; ``alarm = score > h``.
3. *After an alarm*: both sums reset to 0 and the reference is re-learned from the next
   ``warmup`` values, so the detector adapts to the new level instead of alarming on every point
   after a real shift. The reference is frozen between alarms on purpose: a reference that kept
   learning would absorb a slow drift and never signal it.

The defaults (``k = 0.75``, ``h = 15``, ``warmup = 30``) favour few false alarms over fast
detection: the score runs per entity, so a false-alarm rate that is fine for one series alarms on
some entity all the time, and most false alarms come from the error of a short warm-up reference,
which a high threshold absorbs. The price is that only abrupt shifts are caught quickly (a 3-sigma
shift within a few dozen points, as the tests check); a 1-sigma drift is slow or never signalled.
The textbook ``h = 5`` (or ``k = 0.5, h = 10``) alarms early far too often for that reason.

CUSUM is order-dependent, so it has no merge and is never tiled (see ``aggregators``): each entity
is processed sequentially by the one actor that owns its partition.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields

from features.errors import ConfigError, DataError
from features.exceptions import CorruptState


@dataclass
class CusumState:
    """Everything a detector remembers; plain numbers only (JSON-able via ``to_dict``)."""

    n: int = 0  # values seen in the current warm-up (Welford count)
    mean: float = 0.0
    m2: float = 0.0  # Welford's sum of squared deviations
    s_pos: float = 0.0
    s_neg: float = 0.0
    last_score: float = 0.0  # score of the latest value, before any reset
    alarms: int = 0  # alarms since the state was created
    seen: int = 0  # values seen since the state was created

    def to_dict(self) -> dict[str, float | int]:
        # Not ``asdict``: it deep-copies each number, and every changed entity's block encodes
        # this at every commit.
        return {name: getattr(self, name) for name in _STATE_FIELDS}

    @classmethod
    def from_dict(cls, data: dict[str, float | int]) -> CusumState:
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise CorruptState(f"CUSUM state keys {sorted(data)} != {sorted(names)}")
        ints = {"n", "alarms", "seen"}
        try:
            values = {k: int(v) if k in ints else float(v) for k, v in data.items()}
        except (TypeError, ValueError) as exc:
            raise CorruptState(f"bad CUSUM state value: {exc}") from None
        return cls(**values)  # type: ignore[arg-type]


_STATE_FIELDS = tuple(f.name for f in fields(CusumState))


@dataclass(frozen=True, slots=True)
class CusumConfig:
    """Detector parameters: drift ``k`` and threshold ``h`` in std units, warm-up length."""

    drift: float = 0.75
    threshold: float = 15.0
    warmup: int = 30
    min_std: float = 1e-9

    def __post_init__(self) -> None:
        if not (math.isfinite(self.drift) and self.drift >= 0):
            raise ConfigError(f"must be a finite number >= 0, got {self.drift}", field="drift")
        if not (math.isfinite(self.threshold) and self.threshold > 0):
            raise ConfigError(f"must be finite and > 0, got {self.threshold}", field="threshold")
        if self.warmup < 2:
            raise ConfigError(f"needs at least 2 values, got {self.warmup}", field="warmup")
        if not self.min_std > 0:
            raise ConfigError(f"must be > 0, got {self.min_std}", field="min_std")

    def build(self, resume_state: CusumState | None = None) -> CusumLogic:
        """A detector starting from ``resume_state`` (copied) or from scratch."""
        state = CusumState() if resume_state is None else CusumState(**asdict(resume_state))
        return CusumLogic(self, state)


@dataclass
class CusumLogic:
    """A running detector. ``update`` is the only mutator; ``snapshot`` copies the state."""

    config: CusumConfig
    state: CusumState = field(default_factory=CusumState)

    def update(self, value: float) -> tuple[float, bool]:
        """Feed one finite value; returns ``(score, alarm)`` for it."""
        if not math.isfinite(value):
            raise DataError(f"CUSUM input must be finite, got {value!r}")
        st = self.state
        st.seen += 1
        if st.n < self.config.warmup:
            self._learn(value)
            st.last_score = 0.0
            return 0.0, False
        sd = max(math.sqrt(st.m2 / (st.n - 1)), self.config.min_std)
        z = (value - st.mean) / sd
        st.s_pos = max(0.0, st.s_pos + z - self.config.drift)
        st.s_neg = max(0.0, st.s_neg - z - self.config.drift)
        score = max(st.s_pos, st.s_neg)
        st.last_score = score
        alarm = score > self.config.threshold
        if alarm:
            st.alarms += 1
            # Reset the sums and re-learn the reference for the new regime.
            st.n, st.mean, st.m2, st.s_pos, st.s_neg = 0, 0.0, 0.0, 0.0, 0.0
        return score, alarm

    def update_many(self, values: Iterable[float]) -> None:
        """Feed values in order: the state that one :meth:`update` per value leaves, bit for
        bit (the same operations in the same order, on local variables: the stream folds a
        batch's values per entity with it). A non-finite value raises as ``update`` does, with
        the values before it applied."""
        st, config = self.state, self.config
        warmup, min_std, drift, threshold = (
            config.warmup,
            config.min_std,
            config.drift,
            config.threshold,
        )
        n, mean, m2, s_pos, s_neg = st.n, st.mean, st.m2, st.s_pos, st.s_neg
        last_score, alarms, seen = st.last_score, st.alarms, st.seen
        isfinite, sqrt = math.isfinite, math.sqrt
        sd = 0.0  # the frozen reference's std, computed once per detection phase
        try:
            for value in values:
                if not isfinite(value):
                    raise DataError(f"CUSUM input must be finite, got {value!r}")
                seen += 1
                if n < warmup:
                    n += 1
                    delta = value - mean
                    mean += delta / n
                    m2 += delta * (value - mean)
                    last_score = 0.0
                    sd = 0.0
                    continue
                if not sd:  # max(x, min_std) with min_std > 0 is never 0.0
                    root = sqrt(m2 / (n - 1))
                    sd = min_std if min_std > root else root
                z = (value - mean) / sd
                # ``a if a > 0.0 else 0.0`` is ``max(0.0, a)``: 0.0 on ties, like the builtin.
                up = s_pos + z - drift
                s_pos = up if up > 0.0 else 0.0
                down = s_neg - z - drift
                s_neg = down if down > 0.0 else 0.0
                last_score = s_neg if s_neg > s_pos else s_pos
                if last_score > threshold:
                    alarms += 1
                    n, mean, m2, s_pos, s_neg = 0, 0.0, 0.0, 0.0, 0.0
                    sd = 0.0
        finally:
            st.n, st.mean, st.m2, st.s_pos, st.s_neg = n, mean, m2, s_pos, s_neg
            st.last_score, st.alarms, st.seen = last_score, alarms, seen

    def _learn(self, value: float) -> None:
        st = self.state
        st.n += 1
        delta = value - st.mean
        st.mean += delta / st.n
        st.m2 += delta * (value - st.mean)

    def snapshot(self) -> CusumState:
        return CusumState(**asdict(self.state))
