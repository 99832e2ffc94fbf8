"""A DynamoDB endpoint per region, served locally by ``moto_server``.

boto3 reaches it through ``endpoint_url``; pointing a region at real AWS is a config change
(endpoint and credentials), not a code change. The online table is created idempotently.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from cluster.exceptions import MissingTool
from cluster.process import ManagedProcess
from cluster.services.base import Port, ProcessService
from cluster.settings import StackSettings
from regions.aws import dynamodb_client
from regions.config import RegionConfig
from regions.dynamodb_store import create_online_table

__all__ = ["DynamoDBService", "dynamodb_client", "ensure_online_table"]


def ensure_online_table(region: RegionConfig) -> None:
    """Create the region's online table (schema: ``regions.dynamodb_store``) if missing.

    It has no completeness marker then: the region's DynamoDB sink finds it so and rehydrates it
    from the changelog, and serving skips it until the sink marks it ready."""
    client = dynamodb_client(region, timeout_s=10.0)
    if region.dynamodb_table in client.list_tables()["TableNames"]:
        return
    create_online_table(client, region.dynamodb_table)


class DynamoDBService(ProcessService):
    kind = "dynamodb"
    ready_timeout_s = 60.0
    stop_timeout_s = 10.0

    def __init__(self, settings: StackSettings, region: RegionConfig) -> None:
        name = f"dynamodb-{region.name}"
        super().__init__(name, ManagedProcess(name, settings.run_dir, settings.log_dir))
        self._region = region

    @property
    def endpoint(self) -> str:
        return self._region.dynamodb_endpoint_url

    def ports(self) -> list[Port]:
        return [Port(self.name, self._region.dynamodb_endpoint_host, self._region.dynamodb_port)]

    def describe(self) -> str:
        return f"moto, table {self._region.dynamodb_table}"

    def launch(self) -> None:
        argv = [_moto_server(), "-H", self._region.dynamodb_endpoint_host]
        self._proc.spawn([*argv, "-p", str(self._region.dynamodb_port)])

    def after_ready(self) -> None:
        ensure_online_table(self._region)

    def purge(self) -> None:
        """moto keeps tables in memory: stopping the process is the purge."""

    def probe(self) -> str | None:
        try:
            dynamodb_client(self._region).list_tables()
            return None
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"


def _moto_server() -> str:
    # Prefer the one installed beside this interpreter (the project venv), then PATH.
    beside = Path(sys.executable).parent / "moto_server"
    found = str(beside) if beside.exists() else shutil.which("moto_server")
    if found is None:
        raise MissingTool(
            "moto_server", "install the project: `pip install -e .` (it brings moto[server])"
        )
    return found
