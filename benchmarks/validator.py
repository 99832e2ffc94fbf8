"""Consistency validator recomputation: logged answers recomputed offline and classified.

    .venv/bin/python benchmarks/validator.py            # 10,000 answers over 1M events
    .venv/bin/python benchmarks/validator.py --quick    # 1,000 answers over 100,000 events

No stack: synthetic accepted events (uniform users over 3 days, 8 partitions, ingested a second
after their event time) and answer log entries for sampled users at random request times, as a
serving region would log them for all 11 read ``user_spend`` features; a share ``--wrong`` of
the entities' answers is served with a wrong value and the newest event as watermark, so each
takes the full path (truth, known, watermark, lag). Figures: ``recompute_s``
(``training.recompute.recompute``), ``classify_s`` (``training.validate.tally``),
``answers_per_s`` over both, and the class counts. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import replace

import numpy as np
import pyarrow as pa

from cluster.results import record_run
from features.demo import card_transactions_catalog
from regions.answer_log import AnswerEntry
from training.recompute import recompute
from training.validate import CLASSES, Tolerance, tally

CATALOG = card_transactions_catalog()
DAY_MS = 86_400_000
FEATURES = [f.name for f in CATALOG.view("user_spend").features if f.name != "amount_cusum"]


def _events(n: int, users: int, start: int, rng: np.random.Generator) -> pa.Table:
    times = np.sort(rng.integers(start, start + 3 * DAY_MS, n))
    return pa.table(
        {
            "user_id": [f"u{u}" for u in rng.integers(0, users, n)],
            "merchant_id": [f"m{m}" for m in rng.integers(0, 500, n)],
            "amount": np.round(rng.uniform(1, 200, n), 2),
            "event_time_ms": pa.array(times, pa.int64()),
            "_partition": pa.array(np.arange(n) % 8, pa.int32()),
            "_offset": pa.array(np.arange(n) // 8, pa.int64()),
            "_ingested_at_ms": pa.array(times + 1_000, pa.int64()),
        }
    )


def _answers(
    answers: int, users: int, start: int, wrong: float, events: pa.Table, *, seed: int
) -> list[AnswerEntry]:
    """Served as serving would (the offline truth, found by a first untimed pass), except the
    first feature of a ``wrong`` share of the entities' answers."""
    rng = random.Random(seed)
    out: list[AnswerEntry] = []
    while len(out) < answers:
        user, at = f"u{rng.randrange(users)}", start + rng.randrange(DAY_MS, 3 * DAY_MS)
        for feature in FEATURES:
            entry = AnswerEntry(f"r{len(out)}", "us-east", "redis-us-east", at, "user", user,
                                "user_spend", feature, None, "present", None, at - 1)  # fmt: skip
            out.append(entry)
    out = out[:answers]
    truth = recompute(out, CATALOG, events, Tolerance())
    served = []
    for n, (entry, offline) in enumerate(zip(out, truth, strict=True)):
        value, status = offline.truth
        if n % len(FEATURES) == 0 and rng.random() < wrong:
            value, status = -1.0, "present"
        served.append(replace(entry, value=value, status=status))
    return served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--wrong", type=float, default=0.05, help="share of entities served wrong")
    args = parser.parse_args(argv)
    events_n, answers_n = (100_000, 1_000) if args.quick else (1_000_000, 10_000)
    users, start = events_n // 50, 1_764_000_000_000
    events = _events(events_n, users, start, np.random.default_rng(7))
    entries = _answers(answers_n, users, start, args.wrong, events, seed=11)
    tolerance = Tolerance()
    began = time.perf_counter()
    offline = recompute(entries, CATALOG, events, tolerance)
    recomputed = time.perf_counter()
    tallies = tally(entries, offline, {"user_spend": 5_000}, tolerance)
    done = time.perf_counter()
    counts = {k: sum(t.counts[k] for t in tallies.values()) for k in CLASSES}
    figures = {
        "answers": len(entries),
        "events": events_n,
        "recompute_s": round(recomputed - began, 3),
        "classify_s": round(done - recomputed, 3),
        "answers_per_s": round(len(entries) / (done - began)),
        **counts,
    }
    command = "benchmarks/validator.py" + (" --quick" if args.quick else "")
    record_run("validator", figures, command=command)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
