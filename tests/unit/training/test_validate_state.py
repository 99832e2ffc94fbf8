"""A continuous validator's saved cursor and totals (resume without counting twice), and its
one-shot Prometheus textfile."""

from __future__ import annotations

from pathlib import Path

import pytest

from regions.answer_log import AnswerEntry, encode, read_answers_after
from training.exceptions import ValidatorStateError
from training.validate import REAL_SKEW, FeatureTally, Recomputed, Tolerance, tally
from training.validate_metrics import textfile, write_textfile
from training.validate_state import ValidatorState, load_state, save_state


class _Stream:
    """XRANGE over (id, fields) with redis-py's ``(`` exclusive start and an incomplete-id end
    (``<ms>`` means every sequence number of that millisecond)."""

    def __init__(self, ids: list[str], entry: AnswerEntry) -> None:
        self.entries = [(i.encode(), encode(entry)) for i in ids]

    def xrange(
        self, key: str, *, min: str, max: str, count: int
    ) -> list[tuple[bytes, dict[str, str]]]:
        def at(text: str, top: int) -> tuple[int, int]:
            ms, _, seq = text.partition("-")
            return int(ms), int(seq) if seq else top

        low, high = at(min.lstrip("("), 0), (10**30, 0) if max == "+" else at(max, 2**64)
        out = [
            (i, f)
            for i, f in self.entries
            if (at(i.decode(), 0) > low or (at(i.decode(), 0) == low and not min.startswith("(")))
            and at(i.decode(), 0) <= high
        ]
        return out[:count]


ENTRY = AnswerEntry("r", "us-east", "redis-us-east", 5, "user", "u_1", "user_spend",
                    "tx_count_1h", 3, "present", 4, 4)  # fmt: skip


def test_reading_from_a_cursor_resumes_after_it_and_stops_at_the_bound() -> None:
    stream = _Stream(["100-0", "100-1", "200-0", "300-0"], ENTRY)
    first, cursor = read_answers_after(stream, "k", after=None, until_ms=200)
    assert (len(first), cursor) == (3, "200-0")
    rest, cursor = read_answers_after(stream, "k", after=cursor)
    assert (len(rest), cursor) == (1, "300-0")
    none, same = read_answers_after(stream, "k", after=cursor)
    assert (none, same) == ([], "300-0")


def _tallies(served: int) -> dict[str, FeatureTally]:
    entry = AnswerEntry(**{**ENTRY.__dict__, "value": served})
    truth = Recomputed((3, "present"), (3, "present"), (3, "present"))
    return tally([entry], [truth], {"user_spend": 5_000}, Tolerance())


def test_the_state_round_trips_and_totals_add_up_over_cycles(tmp_path: Path) -> None:
    path = tmp_path / "validator" / "state.json"
    assert load_state(path) == ValidatorState()
    state = ValidatorState(cursors={"us-east": "200-0"}, validated_until_ms={"us-east": 250})
    state.add(_tallies(3))
    state.add(_tallies(9))
    save_state(path, state)
    again = load_state(path)
    assert again.to_json() == state.to_json()
    (total,) = again.totals.values()
    assert (again.cycles, total.compared, total.counts[REAL_SKEW]) == (2, 2, 1)


def test_a_broken_state_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text("{not json")
    with pytest.raises(ValidatorStateError, match="not a validator state file"):
        load_state(path)


def test_the_textfile_has_every_class_of_every_feature_and_the_errors(tmp_path: Path) -> None:
    text = textfile(_tallies(9), 1_700_000_000.5)
    lines = text.splitlines()
    base = 'view="user_spend",feature="tx_count_1h"'
    assert f'freshline_validator_run_answers{{{base},class="real_skew"}} 1' in lines
    assert f'freshline_validator_run_answers{{{base},class="equal"}} 0' in lines
    assert f"freshline_validator_run_max_abs_error{{{base}}} 6.0" in lines
    assert "freshline_validator_run_finished_seconds 1700000000.5" in lines
    path = tmp_path / "textfile" / "freshline_validator.prom"
    write_textfile(path, text)
    assert path.read_text() == text
