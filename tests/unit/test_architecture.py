"""The dependency arrows of docs/architecture.md hold, and the check that says so can fail.

The arrows are import-linter contracts in ``.importlinter`` at the repository root. The first test
runs them on the code. The others rebuild a throwaway copy of the package layout in ``tmp_path``,
check it with the same file, and add one forbidden import per contract: each must be rejected, so
a green run means the code obeys the arrows, not that the linter looked at nothing.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / ".importlinter"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONTRACT_PREFIX = "importlinter:contract:"


def _config() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(CONFIG, encoding="utf-8")
    return parser


def _lines(value: str) -> list[str]:
    """The entries of a multi-line setting, without its comment lines."""
    stripped = (line.strip() for line in value.splitlines())
    return [line for line in stripped if line and not line.startswith("#")]


def _contract_ids() -> set[str]:
    sections = _config().sections()
    return {s.removeprefix(CONTRACT_PREFIX) for s in sections if s.startswith(CONTRACT_PREFIX)}


def _lint(cwd: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's contracts, run from ``cwd`` (it imports from there)."""
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev extras"
    limit = [arg for c in contracts for arg in ("--contract", c)]
    return subprocess.run(
        [str(LINT_IMPORTS), str(CONFIG), "--no-cache", "--no-logo", *limit],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tally(result: subprocess.CompletedProcess[str]) -> tuple[int, int]:
    found = re.search(r"Contracts: (\d+) kept, (\d+) broken", result.stdout)
    assert found, f"no contract tally in lint-imports output:\n{result.stdout}{result.stderr}"
    return int(found.group(1)), int(found.group(2))


def test_the_code_keeps_every_documented_arrow() -> None:
    result = _lint(REPO)
    assert result.returncode == 0, f"a dependency arrow is broken:\n{result.stdout}{result.stderr}"
    assert _tally(result) == (len(_contract_ids()), 0), result.stdout


# A throwaway tree in the same layout --------------------------------------------------------------


def _write_module(root: Path, dotted: str, body: str = "") -> None:
    """Create module ``dotted`` under ``root`` with its packages, or add ``body`` to it."""
    path = root.joinpath(*dotted.split("."))
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in [path.parent, *path.parent.parents]:
        if parent == root:
            break
        (parent / "__init__.py").touch()
    with path.with_suffix(".py").open("a", encoding="utf-8") as module:
        module.write(body)


def _lazy_import(target: str) -> str:
    """An import inside a function: the arrows cover lazy imports too."""
    name = target.replace(".", "_")
    return f"\n\ndef load_{name}() -> object:\n    import {target}\n\n    return {target}\n"


def _write_clean_tree(root: Path) -> None:
    """Every root package, plus exactly the imports the contracts excuse in ``ignore_imports``.

    The excused imports must be present: import-linter fails on an exception that matches nothing.
    """
    config = _config()
    roots = _lines(config["importlinter"]["root_packages"])
    for package in roots:
        (root / package).mkdir()
        (root / package / "__init__.py").touch()
    for section in config.sections():
        for rule in _lines(config[section].get("ignore_imports", "")):
            importer, imported = (part.strip().replace("*", "excused") for part in rule.split("->"))
            if imported.split(".")[0] in roots:
                _write_module(root, imported)
            _write_module(root, importer, _lazy_import(imported))


class Violation(NamedTuple):
    contract: str
    module: str
    body: str


VIOLATIONS = [
    Violation("layers", "features.keys", "from regions import config\n"),
    Violation("layers", "regions.tiles", _lazy_import("actors.sink")),
    Violation("layers", "serve_apps.plan", "from actors import runtime\n"),
    Violation("layers", "actors.sink", _lazy_import("cluster.settings")),
    Violation("layers", "chaos.drill", "import benchmarks.serving\n"),
    Violation("layers", "features.tiles", "from training import asof\n"),
    Violation("layers", "training.build", _lazy_import("actors.offline_tables")),
    Violation("layers", "serve_apps.http", "from training import build\n"),
    Violation("features-pure", "features.codec", _lazy_import("redis")),
    Violation("features-pure", "features.catalog", "from ray import serve\n"),
    Violation("regions-stores-only", "regions.replica", "from kafka import KafkaConsumer\n"),
    Violation("store-clients-in-regions", "actors.sink", _lazy_import("boto3")),
    Violation("serving-not-stream", "serve_apps.ingest", "from kafka import KafkaConsumer\n"),
    Violation("stream-not-http", "actors.health", "from starlette.responses import Response\n"),
    Violation("training-offline-only", "training.events", _lazy_import("kafka")),
    Violation("no-test-code", "cluster.stack", "from tests.integration import conftest\n"),
]


def _targets(body: str) -> list[str]:
    return re.findall(r"^\s*(?:from|import) ([a-z_.]+)", body, flags=re.MULTILINE)


@pytest.fixture
def clean_tree(tmp_path: Path) -> Path:
    _write_clean_tree(tmp_path)
    return tmp_path


def test_the_throwaway_tree_keeps_the_arrows(clean_tree: Path) -> None:
    result = _lint(clean_tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _tally(result) == (len(_contract_ids()), 0), result.stdout


@pytest.mark.parametrize("violation", VIOLATIONS, ids=lambda v: f"{v.contract}:{v.module}")
def test_lint_imports_rejects_a_broken_arrow(clean_tree: Path, violation: Violation) -> None:
    roots = _lines(_config()["importlinter"]["root_packages"])
    for target in _targets(violation.body):
        if target.split(".")[0] in roots:
            _write_module(clean_tree, target)
    _write_module(clean_tree, violation.module, violation.body)

    result = _lint(clean_tree, violation.contract)

    assert result.returncode == 1, result.stdout + result.stderr
    assert _tally(result) == (0, 1), result.stdout
    assert violation.module in result.stdout, result.stdout


def test_every_contract_has_a_violation_it_rejects() -> None:
    assert {v.contract for v in VIOLATIONS} == _contract_ids()
