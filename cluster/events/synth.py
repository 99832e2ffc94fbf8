"""Deterministic synthesis of demo card transactions, anomalies included on purpose. No I/O.

The wire format is the demo catalog's (``features/demo.py``): one UTF-8 JSON object per message,
key = ``user_id``. Each event gets one kind, drawn independently with the configured shares:

=============  ==========================================================================
valid          event time = the stream clock (the largest ``now_ms()`` seen so far)
out_of_order   event time = stream clock - U[1, max_out_of_order_ms] (within out-of-orderness)
late           event time = stream clock - late_min_lag_ms - U[0, late_jitter_ms]; only after
               ``late_warmup_events``, and keyed to the user of the latest valid event, so the
               consumer has already seen a fresh event on that partition (its watermark is set)
bad_json       not parseable by ``json.loads``: truncated, a Python repr, or trailing garbage
missing_field  exactly one required field dropped (never ``event_type``: that reads as unknown)
wrong_type     exactly one required field with another JSON type (never ``event_type``)
non_finite     ``amount`` written as the literal NaN, Infinity or -Infinity
oversized      a valid event padded with an extra ``memo`` field past ``MAX_PAYLOAD_BYTES``
future         event time > now + ``future_min_ahead_ms``
unknown_type   ``event_type`` is not ``card_tx``
=============  ==========================================================================

Invariants:

- The same config and the same sequence of clock readings give byte-identical events, whatever
  batch sizes are asked for: random draws are made in fixed chunks of ``CHUNK`` events and the
  clock is read exactly once per event.
- The stream clock never goes back, even if the injected clock does.
- The ledger fields of an event (user_id, merchant_id, amount, event_time_ms) are the event as
  drawn, before any corruption; ``detail`` says which field or variant was corrupted.
- A malformed event is refused by the consumer for exactly the reason named by its kind (the
  validator's checks run in a fixed order; each corruption is chosen not to trip an earlier one).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cluster.events.exceptions import GeneratorConfigError

CHUNK = 4096
MAX_PAYLOAD_BYTES = 4096
VALID_EVENT_TYPE = "card_tx"
UNKNOWN_EVENT_TYPES = ("card_refund_v9", "card_tx_v2", "CARD_TX", "chargeback")
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_WEIGHTS = (0.6, 0.25, 0.15)
REQUIRED_FIELDS = (
    "event_id",
    "seq",
    "event_type",
    "user_id",
    "merchant_id",
    "amount",
    "currency",
    "event_time_ms",
)
# Dropping or mistyping event_type makes the consumer report unknown_type, not the intended kind.
CORRUPTIBLE_FIELDS = tuple(f for f in REQUIRED_FIELDS if f != "event_type")
NON_FINITE_LITERALS = ("NaN", "Infinity", "-Infinity")
BAD_JSON_VARIANTS = ("truncated", "python_repr", "trailing_garbage")


class EventKind(StrEnum):
    VALID = "valid"
    OUT_OF_ORDER = "out_of_order"
    LATE = "late"
    BAD_JSON = "bad_json"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE = "non_finite"
    OVERSIZED = "oversized"
    FUTURE = "future"
    UNKNOWN_TYPE = "unknown_type"


INGESTIBLE_KINDS = frozenset({EventKind.VALID, EventKind.OUT_OF_ORDER, EventKind.LATE})
MALFORMED_KINDS = tuple(k for k in EventKind if k not in INGESTIBLE_KINDS)

# (field, label of the JSON type written, how to mistype the drawn value)
_WRONG_TYPES: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("amount", "string", lambda v: f"{v:.2f}"),
    ("amount", "bool", lambda v: True),
    ("seq", "string", str),
    ("event_time_ms", "string", str),
    ("event_time_ms", "float", lambda v: v + 0.5),
    ("user_id", "int", lambda v: int(v[2:])),
    ("merchant_id", "int", lambda v: int(v[2:])),
    ("currency", "array", lambda v: [v]),
    ("event_id", "int", lambda v: int(v.rsplit("-", 1)[1])),
)


class GeneratorConfig(BaseModel):
    """What to synthesise. Bounds: ``duration_s`` and/or ``max_events`` (whichever ends first)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    run_id: str = Field(default="demo", pattern=r"^[A-Za-z0-9_.]{1,64}$")
    seed: int = Field(default=0, ge=0)
    n_users: int = Field(default=10_000, ge=1, le=10_000_000)
    n_merchants: int = Field(default=500, ge=1, le=10_000_000)
    # P(rank k) is proportional to k**-s; 0 is uniform. 0.9 gives the top 1% of 10k users ~41%.
    user_zipf_s: float = Field(default=0.9, ge=0.0, le=5.0)
    merchant_zipf_s: float = Field(default=1.1, ge=0.0, le=5.0)
    rate_per_s: float = Field(default=500.0, gt=0.0, le=1_000_000.0)
    duration_s: float | None = Field(default=None, gt=0.0)
    max_events: int | None = Field(default=None, ge=1)
    out_of_order_share: float = Field(default=0.02, ge=0.0, le=1.0)
    max_out_of_order_ms: int = Field(default=4_000, ge=1, le=3_600_000)
    late_share: float = Field(default=0.0, ge=0.0, le=1.0)
    late_min_lag_ms: int = Field(default=600_000, ge=60_000)
    late_jitter_ms: int = Field(default=300_000, ge=0)
    late_warmup_events: int = Field(default=500, ge=0)
    malformed_share: float = Field(default=0.0, ge=0.0, le=1.0)
    malformed_kinds: tuple[EventKind, ...] = MALFORMED_KINDS
    future_min_ahead_ms: int = Field(default=300_000, ge=1)
    amount_median: float = Field(default=25.0, gt=0.0, le=1_000_000.0)
    amount_sigma: float = Field(default=1.0, ge=0.0, le=4.0)

    @field_validator("malformed_kinds")
    @classmethod
    def _only_malformed(cls, kinds: tuple[EventKind, ...]) -> tuple[EventKind, ...]:
        wrong = [k.value for k in kinds if k not in MALFORMED_KINDS]
        if wrong:
            raise ValueError(f"not malformed kinds: {wrong}; choose from {list(MALFORMED_KINDS)}")
        # Canonical order, so the same set of kinds always draws the same events.
        return tuple(k for k in MALFORMED_KINDS if k in kinds)

    @model_validator(mode="after")
    def _consistent(self) -> GeneratorConfig:
        if self.duration_s is None and self.max_events is None:
            raise ValueError("duration_s or max_events must be set")
        total = self.out_of_order_share + self.late_share + self.malformed_share
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"out_of_order_share + late_share + malformed_share = {total:.4f} exceeds 1"
            )
        if self.malformed_share > 0 and not self.malformed_kinds:
            raise ValueError("malformed_kinds is empty while malformed_share > 0")
        return self

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> GeneratorConfig:
        """Validate ``data``; raise :class:`GeneratorConfigError` naming the first bad field."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or None
            raise GeneratorConfigError(first["msg"], field=field) from exc

    @property
    def planned_events(self) -> int:
        """Events in the run: ``rate * duration`` (event i is due at i / rate) capped by max."""
        bounds = [] if self.max_events is None else [self.max_events]
        if self.duration_s is not None:
            bounds.append(max(1, math.ceil(self.rate_per_s * self.duration_s - 1e-9)))
        return min(bounds)


class SyntheticEvent(NamedTuple):
    """One message (``key``, ``value``) and the ledger fields describing what it was meant to be.

    A NamedTuple rather than a frozen dataclass: it is much cheaper to build, and one is built
    per event at the generator's highest rates."""

    key: bytes
    value: bytes
    event_id: str
    seq: int
    kind: EventKind
    user_id: str
    merchant_id: str
    amount: float
    event_time_ms: int
    detail: str = ""

    @property
    def ingestible(self) -> bool:
        """True if a correct consumer accepts it (late events are still refused as late)."""
        return self.kind in INGESTIBLE_KINDS


class ZipfSampler:
    """Ranks 0..n-1 with P(k) proportional to (k+1)**-s: one CDF, one ``searchsorted`` per batch."""

    def __init__(self, n: int, s: float) -> None:
        weights = np.arange(1, n + 1, dtype=np.float64) ** -s
        cdf = np.cumsum(weights)
        self._cdf = cdf / cdf[-1]
        self._n = n

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        ranks = np.searchsorted(self._cdf, rng.random(size), side="right")
        return np.minimum(ranks, self._n - 1)

    def top_share(self, k: int) -> float:
        """Expected share of draws that fall on the ``k`` most frequent ranks."""
        return float(self._cdf[min(k, self._n) - 1])


@dataclass(slots=True)
class _Chunk:
    """Pre-drawn randomness for CHUNK events, as Python lists (indexing numpy per event is slow)."""

    kinds: list[int]
    users: list[int]
    merchants: list[int]
    amounts: list[float]
    currencies: list[int]
    jitter: list[float]
    variants: list[int]
    pos: int = 0


class EventSynthesizer:
    """Yields the run's events in ``seq`` order, ``config.planned_events`` of them, then stops.

    ``now_ms`` is read once per event (epoch milliseconds, UTC)."""

    def __init__(self, config: GeneratorConfig, now_ms: Callable[[], int]) -> None:
        self.config = config
        self._now_ms = now_ms
        permutation_seed, draw_seed = np.random.SeedSequence(config.seed).spawn(2)
        # Heavy users get scattered ids rather than u_000000, u_000001, ...
        self._user_of_rank = np.random.default_rng(permutation_seed).permutation(config.n_users)
        self._rng = np.random.default_rng(draw_seed)
        self._users = ZipfSampler(config.n_users, config.user_zipf_s)
        self._merchants = ZipfSampler(config.n_merchants, config.merchant_zipf_s)
        self._kinds = (
            EventKind.VALID,
            EventKind.OUT_OF_ORDER,
            EventKind.LATE,
            *config.malformed_kinds,
        )
        n_malformed = len(config.malformed_kinds)
        shares = [config.out_of_order_share, config.late_share]
        shares += [config.malformed_share / n_malformed] * n_malformed if n_malformed else []
        self._kind_cdf = np.cumsum([max(0.0, 1.0 - sum(shares)), *shares])
        self._currency_cdf = np.cumsum(CURRENCY_WEIGHTS) / sum(CURRENCY_WEIGHTS)
        self._chunk = self._draw_chunk()
        self._seq = 0
        self._stream_ms: int | None = None
        self._last_valid_user: str | None = None

    @property
    def planned(self) -> int:
        return self.config.planned_events

    @property
    def emitted(self) -> int:
        return self._seq

    @property
    def exhausted(self) -> bool:
        return self._seq >= self.planned

    def user_top_share(self, fraction: float) -> float:
        """Expected share of events from the top ``fraction`` of users (e.g. 0.01)."""
        return self._users.top_share(max(1, round(self.config.n_users * fraction)))

    def __iter__(self) -> Iterator[SyntheticEvent]:
        while not self.exhausted:
            yield from self.next_batch(CHUNK)

    def next_batch(self, n: int) -> list[SyntheticEvent]:
        """The next ``min(n, remaining)`` events; an empty list once the run is complete."""
        count = max(0, min(n, self.planned - self._seq))
        return [self._next() for _ in range(count)]

    def _draw_chunk(self) -> _Chunk:
        rng, cfg = self._rng, self.config
        kind_codes = np.searchsorted(self._kind_cdf, rng.random(CHUNK), side="right")
        users = self._user_of_rank[self._users.draw(rng, CHUNK)]
        merchants = self._merchants.draw(rng, CHUNK)
        amounts = rng.lognormal(math.log(cfg.amount_median), cfg.amount_sigma, CHUNK)
        currencies = np.searchsorted(self._currency_cdf, rng.random(CHUNK), side="right")
        return _Chunk(
            kinds=np.minimum(kind_codes, len(self._kinds) - 1).tolist(),
            users=users.tolist(),
            merchants=merchants.tolist(),
            amounts=np.maximum(np.round(amounts, 2), 0.01).tolist(),
            currencies=np.minimum(currencies, len(CURRENCIES) - 1).tolist(),
            jitter=rng.random(CHUNK).tolist(),
            variants=rng.integers(0, 2**31, CHUNK).tolist(),
        )

    def _next(self) -> SyntheticEvent:
        chunk = self._chunk
        if chunk.pos == CHUNK:
            chunk = self._chunk = self._draw_chunk()
        i = chunk.pos
        chunk.pos += 1
        now = self._now_ms()
        stream = now if self._stream_ms is None or now > self._stream_ms else self._stream_ms
        self._stream_ms = stream
        seq = self._seq
        self._seq += 1

        kind = self._kinds[chunk.kinds[i]]
        if kind is EventKind.LATE and (
            seq < self.config.late_warmup_events or self._last_valid_user is None
        ):
            kind = EventKind.VALID
        if kind is EventKind.LATE:
            user_id = self._last_valid_user or ""
        else:
            user_id = f"u_{chunk.users[i]:06d}"
        if kind is EventKind.VALID:
            self._last_valid_user = user_id
        event_id = f"{self.config.run_id}-{seq}"
        merchant_id = f"m_{chunk.merchants[i]:05d}"
        amount = chunk.amounts[i]
        event_time_ms = (
            stream
            if kind is EventKind.VALID
            else self._event_time(kind, now, stream, chunk.jitter[i])
        )
        fields: dict[str, Any] = {
            "event_id": event_id,
            "seq": seq,
            "event_type": VALID_EVENT_TYPE,
            "user_id": user_id,
            "merchant_id": merchant_id,
            "amount": amount,
            "currency": CURRENCIES[chunk.currencies[i]],
            "event_time_ms": event_time_ms,
        }
        value, detail = _encode(kind, fields, chunk.variants[i])
        return SyntheticEvent(
            user_id.encode(),
            value,
            event_id,
            seq,
            kind,
            user_id,
            merchant_id,
            amount,
            event_time_ms,
            detail,
        )

    def _event_time(self, kind: EventKind, now: int, stream: int, jitter: float) -> int:
        cfg = self.config
        if kind is EventKind.OUT_OF_ORDER:
            return stream - 1 - int(jitter * cfg.max_out_of_order_ms)
        if kind is EventKind.LATE:
            return stream - cfg.late_min_lag_ms - int(jitter * (cfg.late_jitter_ms + 1))
        if kind is EventKind.FUTURE:
            return now + cfg.future_min_ahead_ms + 1 + int(jitter * cfg.future_min_ahead_ms)
        return stream


def _encode(kind: EventKind, fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    """Wire bytes of an event of ``kind`` and the detail of its corruption. Mutates ``fields``."""
    encoder = _ENCODERS.get(kind)
    if encoder is None:
        return orjson.dumps(fields), ""
    return encoder(fields, variant)


def _bad_json(fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    how = BAD_JSON_VARIANTS[variant % len(BAD_JSON_VARIANTS)]
    raw = orjson.dumps(fields)
    if how == "truncated":
        # Every proper prefix of a JSON object's text is invalid: the object is never closed.
        return raw[: 1 + (variant // 3) % (len(raw) - 1)], how
    if how == "python_repr":
        return repr(fields).encode(), how
    return raw + b"}", how


def _missing_field(fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    name = CORRUPTIBLE_FIELDS[variant % len(CORRUPTIBLE_FIELDS)]
    del fields[name]
    return orjson.dumps(fields), name


def _wrong_type(fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    name, label, mistype = _WRONG_TYPES[variant % len(_WRONG_TYPES)]
    fields[name] = mistype(fields[name])
    return orjson.dumps(fields), f"{name}:{label}"


def _non_finite(fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    literal = NON_FINITE_LITERALS[variant % len(NON_FINITE_LITERALS)]
    fields["amount"] = float(literal)
    # orjson writes NaN as null; the stdlib writes the (non-standard) literal we want.
    return json.dumps(fields, separators=(",", ":")).encode(), literal


def _oversized(fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    target = MAX_PAYLOAD_BYTES + 1 + variant % MAX_PAYLOAD_BYTES
    fields["memo"] = ""
    fields["memo"] = "x" * (target - len(orjson.dumps(fields)))
    return orjson.dumps(fields), f"{target} bytes"


def _unknown_type(fields: dict[str, Any], variant: int) -> tuple[bytes, str]:
    fields["event_type"] = UNKNOWN_EVENT_TYPES[variant % len(UNKNOWN_EVENT_TYPES)]
    return orjson.dumps(fields), fields["event_type"]


_ENCODERS: dict[EventKind, Callable[[dict[str, Any], int], tuple[bytes, str]]] = {
    EventKind.BAD_JSON: _bad_json,
    EventKind.MISSING_FIELD: _missing_field,
    EventKind.WRONG_TYPE: _wrong_type,
    EventKind.NON_FINITE: _non_finite,
    EventKind.OVERSIZED: _oversized,
    EventKind.UNKNOWN_TYPE: _unknown_type,
}
