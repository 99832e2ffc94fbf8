"""A cluster node's passwords come from its environment or the stack's file, never generated."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.secrets import SECRET_ENV_VARS, load_or_create_secrets, node_secrets
from features.errors import ConfigError

_ENV = {name: f"pw-{i}" for i, name in enumerate(SECRET_ENV_VARS)}


def test_a_node_takes_every_password_from_its_environment_and_writes_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets.json"
    got = node_secrets(path, _ENV)
    assert got.redis_reader_password.get_secret_value() == _ENV["FRESHLINE_REDIS_READER_PASSWORD"]
    assert got.redis_admin_password.get_secret_value() == _ENV["FRESHLINE_REDIS_ADMIN_PASSWORD"]
    assert not path.exists()


def test_a_node_on_the_local_stack_reads_the_file_the_stack_created(tmp_path: Path) -> None:
    path = tmp_path / "secrets.json"
    created = load_or_create_secrets(path, {})
    assert node_secrets(path, {}) == created


def test_a_node_without_secrets_refuses_to_start_naming_the_missing_variables(
    tmp_path: Path,
) -> None:
    path = tmp_path / "secrets.json"
    partial = {"FRESHLINE_REDIS_READER_PASSWORD": "only-reader"}
    with pytest.raises(ConfigError) as caught:
        node_secrets(path, partial)
    assert caught.value.field == "FRESHLINE_REDIS_ADMIN_PASSWORD, FRESHLINE_REDIS_WRITER_PASSWORD"
    assert not path.exists()
