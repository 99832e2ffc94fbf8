"""Redis ACL passwords: taken from the environment, else from the state dir, else generated once.

Only the machine that starts the stack generates (:func:`load_or_create_secrets`); a cluster node
(the pipeline job, a worker) calls :func:`node_secrets`, which reads and never writes, so a worker
can never mint passwords that no Redis knows. The secrets file is written with mode 0600 before any
password is put in it. A real deployment passes the passwords through its secret manager as
``FRESHLINE_REDIS_*_PASSWORD`` variables (a Kubernetes Secret, see cluster/deploy/).
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr

from cluster.settings import Secrets
from features.errors import ConfigError

_FIELDS = ("redis_admin_password", "redis_writer_password", "redis_reader_password")
# The variables a node's secret store must set (docs/deploy.md, cluster/deploy/ manifests).
SECRET_ENV_VARS = tuple(f"FRESHLINE_{field.upper()}" for field in _FIELDS)


def load_or_create_secrets(secrets_file: Path, environ: Mapping[str, str]) -> Secrets:
    """Environment first (``FRESHLINE_REDIS_ADMIN_PASSWORD`` ...), then the file, then generate."""
    stored = _read(secrets_file)
    values: dict[str, str] = {}
    for field in _FIELDS:
        env_value = environ.get(f"FRESHLINE_{field.upper()}")
        values[field] = env_value or stored.get(field) or secrets.token_urlsafe(24)
    if any(values[f] != stored.get(f) for f in _FIELDS):
        _write(secrets_file, values)
    return Secrets(**{k: SecretStr(v) for k, v in values.items()})


def read_secrets(secrets_file: Path, environ: Mapping[str, str]) -> Secrets:
    """The same precedence as :func:`load_or_create_secrets`, writing nothing: a password in
    neither place is empty, so a probe made with it fails authentication instead of guessing."""
    values = _lookup(secrets_file, environ)
    return Secrets(**{k: SecretStr(v) for k, v in values.items()})


def node_secrets(secrets_file: Path, environ: Mapping[str, str]) -> Secrets:
    """The passwords a cluster node runs with: environment first, then the stack's secrets file;
    one in neither place raises ConfigError naming its variable (never generated here)."""
    values = _lookup(secrets_file, environ)
    missing = [var for f, var in zip(_FIELDS, SECRET_ENV_VARS, strict=True) if not values[f]]
    if missing:
        raise ConfigError(
            f"not in the environment nor in {secrets_file}; set it from your secret store",
            field=", ".join(missing),
        )
    return Secrets(**{k: SecretStr(v) for k, v in values.items()})


def _lookup(secrets_file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    stored = _read(secrets_file)
    return {f: environ.get(f"FRESHLINE_{f.upper()}") or stored.get(f) or "" for f in _FIELDS}


def _read(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {k: str(v) for k, v in data.items() if k in _FIELDS}


def _write(path: Path, values: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    tmp.replace(path)
