"""The chaos drills get a stack of their own: they kill its broker, wipe its Redis and stall its
stores, which no other test should have to survive. It lives for the module and is purged after."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cluster.stack import Stack
from tests.integration.conftest import running_stack


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("chaos")) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _private_results(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Drills run by the suite record their lines in a temporary folder: the repository's
    benchmarks/results/ holds the history of deliberate runs, not of every test session."""
    monkeypatch.setenv("FRESHLINE_RESULTS_DIR", str(tmp_path))
