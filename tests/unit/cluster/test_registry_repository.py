"""Reading a feature repository from disk (cluster.registry.load_repository)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from actors.registry_feed import RegistryUnavailable
from cluster import cli
from cluster.registry import load_repository, within
from features.demo import card_transactions_catalog
from features.registry import RepositoryError, plan

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "card_transactions"


def test_the_example_repository_is_the_demo_catalog() -> None:
    assert plan(card_transactions_catalog(), load_repository(EXAMPLE)) == []


def test_broken_yaml_is_reported_with_its_document_and_line(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    (repo / "views" / "extra.yml").write_text("views:\n  - name: x\n    features: [\n")
    with pytest.raises(RepositoryError, match=r"^views/extra\.yml: not valid YAML line \d+"):
        load_repository(repo)


def test_a_folder_without_definitions_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("no definitions here")
    with pytest.raises(RepositoryError, match=r"holds no \.yaml or \.yml definitions"):
        load_repository(tmp_path)
    with pytest.raises(RepositoryError, match="is not a folder"):
        load_repository(tmp_path / "missing")


def test_the_cli_prints_the_culprit_path_verbatim_on_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rich would read ``[user_spend]`` as markup and drop it, and wrap a long message."""
    repo = tmp_path / "repo"
    shutil.copytree(EXAMPLE, repo)
    view = repo / "views" / "user_spend.yaml"
    view.write_text(view.read_text().replace("ttl: 8d", "ttl: 1h"))
    assert cli.main(["plan", str(repo)]) == 1  # refused before any broker is asked
    err = capsys.readouterr().err
    assert err.startswith("error: views/user_spend.yaml: views[user_spend].ttl: shorter than")
    assert err.count("\n") == 1


def test_a_transactional_call_that_never_returns_fails_the_apply_clearly() -> None:
    """kafka-python may wait forever on a request it dropped after a broker restart: the apply
    gives up after its wait with an error naming the step, and other outcomes pass through."""
    gate = threading.Event()
    with pytest.raises(RegistryUnavailable, match="the commit did not finish within 0 s"):
        within(0.05, "the commit", lambda: gate.wait(10))
    gate.set()

    def refused() -> None:
        raise ValueError("fenced")

    with pytest.raises(ValueError, match="fenced"):
        within(5, "the commit", refused)
    done: list[int] = []
    within(5, "the commit", lambda: done.append(1))
    assert done == [1]
