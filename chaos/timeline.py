"""What happened over a drill, second by second: HTTP samples, sampled gauges, fault windows.

Times are seconds since the drill's start on the monotonic clock, which the drill injects; the
report carries the wall-clock start so that a timeline can be matched with service logs.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from chaos.load import Sample

OK = 200
SHED = 503
# The gauge a Sampler records each time its probe fails: the failures so far.
PROBE_ERRORS = "probe errors"


@dataclass(frozen=True)
class FaultWindow:
    label: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class SecondStats:
    t_s: int
    requests: int
    errors: int  # any answer but 200, transport errors included
    shed: int  # 503 answers
    p50_ms: float
    p99_ms: float
    stores: Mapping[str, int]
    # Answers not served by the first store (another store or defaults), by why the first one
    # was passed over ("redis-x=outcome").
    passed_over: Mapping[str, int] = field(default_factory=dict)
    # 503 answers by the gate that shed them (loop-lag, in-flight, late-read; "serve" for
    # Serve's own backpressure, which names none).
    shed_by: Mapping[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def per_second(samples: Iterable[Sample]) -> list[SecondStats]:
    buckets: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        buckets[int(s.sent_s)].append(s)
    out = []
    for t in sorted(buckets):
        group = buckets[t]
        stores: dict[str, int] = defaultdict(int)
        why: dict[str, int] = defaultdict(int)
        gates: dict[str, int] = defaultdict(int)
        for s in group:
            if s.status == SHED:
                gates[s.shed_by or "serve"] += 1
            if s.store:
                stores[s.store] += 1
            if s.fallback:
                why[s.fallback.split(",", 1)[0]] += 1
        latencies = [s.latency_s * 1000 for s in group if s.status == OK]
        out.append(
            SecondStats(
                t_s=t,
                requests=len(group),
                errors=sum(1 for s in group if s.status != OK),
                shed=sum(1 for s in group if s.status == SHED),
                p50_ms=percentile(latencies, 0.50),
                p99_ms=percentile(latencies, 0.99),
                stores=dict(stores),
                passed_over=dict(why),
                shed_by=dict(gates),
            )
        )
    return out


def within(samples: Iterable[Sample], start_s: float, end_s: float) -> list[Sample]:
    return [s for s in samples if start_s <= s.sent_s < end_s]


def error_rate(samples: list[Sample]) -> float:
    return sum(1 for s in samples if s.status != OK) / len(samples) if samples else 0.0


@dataclass
class Timeline:
    """Everything a report plots. ``gauges[name]`` is a list of ``(t_s, value)``."""

    monotonic: Callable[[], float] = time.monotonic
    samples: list[Sample] = field(default_factory=list)
    gauges: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    faults: list[FaultWindow] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.t0 = self.monotonic()

    def now_s(self) -> float:
        return self.monotonic() - self.t0

    def record(self, name: str, value: float) -> None:
        self.gauges.setdefault(name, []).append((round(self.now_s(), 3), float(value)))

    def fault(self, label: str, start_s: float, end_s: float | None = None) -> FaultWindow:
        window = FaultWindow(label, start_s, self.now_s() if end_s is None else end_s)
        self.faults.append(window)
        return window

    def add_load(self, samples: list[Sample], started_at_monotonic: float) -> None:
        """Attach an :class:`HttpLoad`'s samples, shifted onto this timeline's clock."""
        offset = started_at_monotonic - self.t0
        self.samples = [dataclasses.replace(s, sent_s=s.sent_s + offset) for s in samples]


class Sampler:
    """Calls ``probe()`` every ``interval_s`` in a thread and records each returned gauge.

    A probe that raises records nothing that round (a fault may make the probe itself fail);
    failures are counted in ``probe_errors`` and that count is recorded as the gauge
    :data:`PROBE_ERRORS`, so that a silent probe shows in the report's gauges and plot, at the
    moment it failed.
    """

    def __init__(
        self, timeline: Timeline, probe: Callable[[], Mapping[str, float]], interval_s: float = 1.0
    ) -> None:
        self._timeline = timeline
        self._probe = probe
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-sampler", daemon=True)
        self.probe_errors = 0

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                values = self._probe()
            except Exception:
                self.probe_errors += 1
                self._timeline.record(PROBE_ERRORS, self.probe_errors)
            else:
                for name, value in values.items():
                    self._timeline.record(name, value)
            self._stop.wait(self._interval_s)
