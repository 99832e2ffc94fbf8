from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [
    "features",
    "regions",
    "cluster",
    "actors",
    "serve_apps",
    "training",
    "chaos",
    "benchmarks",
]
WHITELIST = ROOT / "vulture_whitelist.py"


def _vulture(*paths: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vulture", *map(str, paths), "--min-confidence", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )


def test_no_code_is_dead_outside_the_reasoned_whitelist() -> None:
    """Code nothing calls still has to be read, kept typed and kept true; each name the pass
    cannot see used is listed in the whitelist with the reason it is used after all."""
    result = _vulture(*PACKAGES, WHITELIST)
    assert result.returncode == 0 and result.stdout == "", (
        "dead code (remove it, or whitelist it with the reason it is used):\n" + result.stdout
    )


def test_the_pass_reports_an_unused_function(tmp_path: Path) -> None:
    """Guards the check above: the same command does find dead code when there is some."""
    module = tmp_path / "dead.py"
    module.write_text("def never_called() -> int:\n    return 1\n", encoding="utf-8")
    result = _vulture(module, WHITELIST)
    assert result.returncode == 3
    assert "unused function 'never_called'" in result.stdout
