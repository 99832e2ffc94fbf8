"""The ledger file: round trip, append-only, a torn last line tolerated, corruption reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.events.exceptions import LedgerCorrupt
from cluster.events.ledger import LedgerRecord, LedgerWriter, read_ledger
from cluster.events.synth import EventKind, EventSynthesizer, GeneratorConfig
from tests.unit.events.fakes import StepClock


def records(n: int, offset: int = 0) -> list[LedgerRecord]:
    config = GeneratorConfig(max_events=n, malformed_share=0.5, run_id="led")
    events = EventSynthesizer(config, StepClock()).next_batch(n)
    return [LedgerRecord.acknowledged(e, "fl.t", e.seq % 8, offset + e.seq) for e in events]


def test_records_round_trip_in_order(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "ledger.jsonl"
    written = records(200)
    with LedgerWriter.open(path) as ledger:
        ledger.append_many(written[:50])
        ledger.append_many([])
        ledger.append_many(written[50:])
    back = read_ledger(path)
    assert back == written
    assert all(isinstance(r.kind, EventKind) for r in back)
    assert {r.kind for r in back} > {EventKind.VALID}


def test_a_second_writer_appends(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    first, second = records(10), records(10, offset=100)
    for batch in (first, second):
        with LedgerWriter.open(path) as ledger:
            ledger.append_many(batch)
    assert read_ledger(path) == first + second


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with LedgerWriter.open(path) as ledger:
        ledger.append_many(records(5))
    whole = path.read_bytes()
    path.write_bytes(whole[:-40])
    assert len(read_ledger(path)) == 4


def test_a_bad_line_in_the_middle_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with LedgerWriter.open(path) as ledger:
        ledger.append_many(records(5))
    lines = path.read_bytes().split(b"\n")
    lines[2] = b'{"topic": "x"}'
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerCorrupt) as caught:
        read_ledger(path)
    assert caught.value.line_no == 3
