"""Benchmark and drill results as data: one JSON line per run in ``<results dir>/<name>.jsonl``.

A line is one object::

    {"name": "ingest", "commit": "<HEAD sha>", "dirty": false, "utc": "2026-12-04T17:00:00Z",
     "load_avg": [1.2, 0.9, 0.7], "command": ".venv/bin/python benchmarks/ingest.py --quick",
     "figures": {...every figure the run produced...}}

Files are append-only: a run adds its line and never rewrites another's, so a file is the run
history of one benchmark or drill, and the docs show its last line. ``commit`` and ``dirty`` are
null when git cannot tell (no git, not a checkout); ``dirty`` is true when tracked files other
than the results themselves differ from HEAD, i.e. the figures may not belong to the commit named
(a run's own line, appended to a tracked results file, does not make the next run dirty).
Non-finite floats are written as null, and keys or values JSON cannot hold as text, so every line
is valid JSON and a finished run is never lost over a figure's type.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from features.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
RESULTS_DIR_ENV = "FRESHLINE_RESULTS_DIR"  # overrides DEFAULT_RESULTS_DIR, e.g. for a CI artifact
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_GIT_TIMEOUT_S = 10.0
# Results are data, not code: lines appended by earlier runs do not change what the code measures.
_NOT_CODE = (DEFAULT_RESULTS_DIR.relative_to(REPO_ROOT).as_posix(),)


def record_run(
    name: str,
    figures: Mapping[str, Any],
    *,
    command: str,
    results_dir: Path | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """Append one run's line to ``<results_dir>/<name>.jsonl`` (the folder is created if missing)
    and return the record exactly as written. ``name`` must be a plain file stem."""
    _check_name(name)
    if not isinstance(figures, Mapping):
        raise ConfigError(
            f"figures must be a mapping, not {type(figures).__name__}", field="figures"
        )
    at = now()
    if at.tzinfo is None:
        raise ConfigError("the clock must return a timezone-aware datetime", field="now")
    commit, dirty = git_state(REPO_ROOT)
    record = {
        "name": name,
        "commit": commit,
        "dirty": dirty,
        "utc": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_avg": _load_avg(),
        "command": command,
        "figures": dict(figures),
    }
    options = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    line = orjson.dumps(record, default=str, option=options) + b"\n"
    folder = results_dir if results_dir is not None else _default_results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # One write of the whole line to a file opened for appending: runs never interleave halves.
    with (folder / f"{name}.jsonl").open("ab") as out:
        out.write(line)
    written: dict[str, Any] = orjson.loads(line)
    return written


def current_command(argv: Sequence[str] | None = None) -> str:
    """The command line of this process as it could be typed again from the repository root:
    a script run by Python gets its interpreter in front, paths inside the repository are
    relative to it."""
    args = list(sys.argv if argv is None else argv)
    if args and args[0].endswith(".py"):
        args.insert(0, sys.executable)
    return shlex.join(_relative(a) for a in args)


def git_state(repo: Path, ignore: Sequence[str] = _NOT_CODE) -> tuple[str | None, bool | None]:
    """``(HEAD sha, tracked files outside ``ignore`` differ from HEAD)`` of ``repo``;
    ``(None, None)`` when git is missing or ``repo`` is not a checkout."""
    git = shutil.which("git")
    if git is None:
        return None, None
    try:
        head = _git(git, repo, "rev-parse", "HEAD")
        excluded = [f":(exclude){path}" for path in ignore]
        changes = _git(
            git, repo, "status", "--porcelain", "--untracked-files=no", "--", ".", *excluded
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head, bool(changes)


def _git(git: str, repo: Path, *args: str) -> str:
    done = subprocess.run(
        [git, "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=_GIT_TIMEOUT_S,
    )
    return done.stdout.strip()


def _default_results_dir() -> Path:
    """The one place the results folder's environment override is read."""
    override = os.environ.get(RESULTS_DIR_ENV, "").strip()
    return Path(override) if override else DEFAULT_RESULTS_DIR


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{name!r} is not a results name: use letters, digits, '-', '_' or '.', starting "
            "with a letter or digit, at most 100 characters (it becomes <name>.jsonl)",
            field="name",
        )


def _load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not every platform has a load average
        return None


def _relative(arg: str) -> str:
    path = Path(arg)
    if path.is_absolute():
        try:
            return str(path.relative_to(REPO_ROOT))
        except ValueError:
            return arg
    return arg
