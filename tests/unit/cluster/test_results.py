"""Results as data: each run appends one valid JSON line, history is never rewritten."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from cluster import results
from cluster.results import RESULTS_DIR_ENV, current_command, git_state, record_run
from features.errors import ConfigError

FIRST = datetime(2026, 12, 4, 17, 0, 5, tzinfo=UTC)
SECOND = datetime(2026, 12, 4, 18, 30, tzinfo=timezone(timedelta(hours=1)))  # 17:30 UTC


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_run_appends_one_line_with_every_field(tmp_path: Path) -> None:
    figures = {"events_per_s": 10972, "p99_ms": 2.5, "by_sink": {"us-east/redis": 12}}
    record = record_run(
        "ingest", figures, command="bench --quick", results_dir=tmp_path, now=lambda: FIRST
    )
    lines = _lines(tmp_path / "ingest.jsonl")
    assert lines == [record]
    assert record["name"] == "ingest"
    assert record["utc"] == "2026-12-04T17:00:05Z"
    assert record["command"] == "bench --quick"
    assert record["figures"] == figures
    load = record["load_avg"]
    assert isinstance(load, list) and len(load) == 3
    assert all(isinstance(x, float) and x >= 0 for x in load)
    head, dirty = git_state(results.REPO_ROOT)
    assert record["commit"] == head and record["dirty"] == dirty


def test_runs_append_and_never_rewrite_history(tmp_path: Path) -> None:
    record_run("drill-x", {"verdict": "PASS"}, command="a", results_dir=tmp_path, now=lambda: FIRST)
    record_run(
        "drill-x", {"verdict": "FAIL"}, command="b", results_dir=tmp_path, now=lambda: SECOND
    )
    lines = _lines(tmp_path / "drill-x.jsonl")
    assert [(line["utc"], line["figures"]) for line in lines] == [
        ("2026-12-04T17:00:05Z", {"verdict": "PASS"}),
        ("2026-12-04T17:30:00Z", {"verdict": "FAIL"}),
    ], "the second run is a new line after the first, its time in UTC"


def test_the_folder_is_created_and_non_finite_figures_are_null(tmp_path: Path) -> None:
    folder = tmp_path / "new" / "results"
    record = record_run(
        "serving", {"p99_ms": float("nan"), "max": float("inf")}, command="c", results_dir=folder
    )
    assert record["figures"] == {"p99_ms": None, "max": None}
    assert _lines(folder / "serving.jsonl") == [record]


def test_figures_json_cannot_hold_are_written_as_text(tmp_path: Path) -> None:
    record = record_run(
        "x",
        {"statuses": {200: 5, 503: 1}, "state_dir": tmp_path},
        command="c",
        results_dir=tmp_path,
    )
    assert record["figures"] == {"statuses": {"200": 5, "503": 1}, "state_dir": str(tmp_path)}


@pytest.mark.parametrize("bad", ["", "../escape", "a/b", ".hidden", "x..y", "a b", "x" * 101])
def test_a_name_that_is_not_a_safe_file_stem_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a results name"):
        record_run(bad, {"a": 1}, command="c", results_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [], "nothing is written for a refused name"


def test_a_naive_clock_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timezone-aware"):
        record_run("x", {}, command="c", results_dir=tmp_path, now=lambda: datetime(2026, 1, 1))  # noqa: DTZ001


def test_the_environment_chooses_the_default_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path))
    record_run("stack_up", {"cold_s": 80.1}, command="c")
    assert _lines(tmp_path / "stack_up.jsonl")[0]["figures"] == {"cold_s": 80.1}


def test_the_default_folder_is_benchmarks_results_in_the_repository(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(RESULTS_DIR_ENV, raising=False)
    default = results._default_results_dir()
    assert default == results.REPO_ROOT / "benchmarks" / "results"
    assert (default / "README.md").is_file(), "the folder that holds the history, not a guess"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_names_head_and_whether_tracked_files_changed(tmp_path: Path) -> None:
    assert git_state(tmp_path) == (None, None), "not a checkout: unknown, not a guess"
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(tmp_path), *args], env=env, check=True, capture_output=True, text=True
        )
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "f.txt").write_text("one")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")
    (tmp_path / "untracked.txt").write_text("ignored")
    assert git_state(tmp_path) == (head, False), "untracked files do not make figures dirty"
    (tmp_path / "f.txt").write_text("two")
    assert git_state(tmp_path) == (head, True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_runs_own_results_line_does_not_make_the_next_run_dirty(tmp_path: Path) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    results_dir = tmp_path / "benchmarks" / "results"
    results_dir.mkdir(parents=True)
    (results_dir / "x.jsonl").write_text("{}\n")
    (tmp_path / "code.py").write_text("one")
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "one"]):
        subprocess.run(["git", "-C", str(tmp_path), *args], env=env, check=True)
    with (results_dir / "x.jsonl").open("a") as out:
        out.write("{}\n")
    assert git_state(tmp_path)[1] is False, "an appended results line is data, not code"
    (tmp_path / "code.py").write_text("two")
    assert git_state(tmp_path)[1] is True, "a changed code file still makes the figures dirty"


def test_current_command_can_be_typed_again_from_the_repository_root() -> None:
    script = str(results.REPO_ROOT / "benchmarks" / "ingest.py")
    command = current_command([script, "--events", "300000"])
    assert command.endswith(" benchmarks/ingest.py --events 300000")
    assert current_command(["/usr/bin/freshline", "chaos", "run", "a b"]) == (
        "/usr/bin/freshline chaos run 'a b'"
    )
