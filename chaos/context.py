"""The running system a drill acts on: the stack, the pipeline job, the Serve applications.

:meth:`DrillContext.prepare` brings them to a drill's starting state (idempotently: a running stack,
pipeline or app is left alone) and connects to the Ray head; everything a drill reads of the
system goes through here, so the drills themselves read as fault, load, judgement.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import orjson

from actors.config import DEFAULT_CONSUMERS
from actors.runtime import NAMESPACE
from chaos import verify
from chaos.exceptions import DrillSetupFailed
from chaos.faults import ServiceLike
from chaos.load import http_request
from cluster.events import GeneratorConfig, GeneratorReport, LedgerRecord, read_ledger
from cluster.services.redis import RedisService
from cluster.settings import DEFAULT_EVENTS_TOPIC, Secrets, StackSettings
from cluster.stack import Stack
from features.errors import FreshlineError

USER_FEATURES = tuple(f"user_spend:{f.name}" for f in verify.CATALOG.view("user_spend").features)


# What a failed drill's report shows per sink (SinkActor.status() fields).
_SINK_SUMMARY_FIELDS = (
    "applied_records",
    "lag",
    "assigned_partitions",
    "store_state",
    "store_failures",
    "paused",
    "last_error",
    "since_last_step_s",
)


@dataclass
class DrillContext:
    stack: Stack
    quick: bool
    out_dir: Path
    consumers: int = DEFAULT_CONSUMERS
    api_key: str = ""
    _ray_up: bool = field(default=False, init=False)

    @property
    def settings(self) -> StackSettings:
        return self.stack.settings

    @property
    def secrets(self) -> Secrets:
        return self.stack.secrets

    @property
    def bootstrap(self) -> str:
        return self.settings.kafka.bootstrap

    @property
    def serve_port(self) -> int:
        return self.settings.ray.serve_port

    def door_port(self, region: str) -> int:
        """The port of ``region``'s front door (cluster/services/haproxy.py)."""
        return self.settings.front_door.ports[self.settings.topology.names.index(region)]

    # -- bringing the system up -------------------------------------------------------------

    def prepare(self) -> None:
        """Stack up, pipeline job up, region apps deployed and ready, Ray connected."""
        from cluster import pipeline, serving

        try:
            self.stack.up()
            pipeline.up(self.settings, self.consumers)
            serving.serve_up(self.settings)
            self.api_key = serving.load_or_create_api_key(self.settings)
            for region in self.settings.topology.names:
                self.wait_ready(region, timeout_s=120)
        except FreshlineError as exc:
            raise DrillSetupFailed(f"could not prepare the drill: {exc}") from exc
        self.connect()

    def connect(self) -> None:
        import ray

        os.environ.update(self.settings.ray.client_env())  # read by ray.init in this process
        ray.init(
            address=self.settings.ray.address,
            namespace=NAMESPACE,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
        self._ray_up = True

    def close(self) -> None:
        if self._ray_up:
            import ray

            ray.shutdown()
            self._ray_up = False

    def wait_ready(self, region: str, timeout_s: float) -> float:
        """Poll ``/<region>/v1/ready`` until 200; returns the seconds it took."""
        import httpx

        began = time.monotonic()
        url = f"http://127.0.0.1:{self.serve_port}/{region}/v1/ready"
        while time.monotonic() - began < timeout_s:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return time.monotonic() - began
            time.sleep(0.25)
        raise DrillSetupFailed(f"{region} serving was not ready within {timeout_s:.0f} s")

    def redis_service(self, region: str) -> RedisService:
        return cast(RedisService, self.stack.service(f"redis-{region}"))

    def process_service(self, name: str) -> ServiceLike:
        """A stack service with a tracked process (every one of ``cluster.services`` has one)."""
        return cast(ServiceLike, self.stack.service(name))

    # -- reading the pipeline ---------------------------------------------------------------

    def pipeline_status(self) -> dict[str, Any]:
        from actors import job

        state = job.status()
        if state is None:
            raise DrillSetupFailed("no pipeline is running on the stack's head")
        return state

    def sink(self, region: str, store: str) -> dict[str, Any]:
        for sink in self.pipeline_status()["sinks"]:
            if sink["region"] == region and sink["store"] == store:
                return dict(sink)
        raise DrillSetupFailed(f"no sink for {region}/{store}")

    def sink_summary(self) -> str:
        """One line per sink for a failed drill's report: what an operator would look at first."""
        lines = []
        for sink in self.pipeline_status()["sinks"]:
            fields = " ".join(f"{k}={sink.get(k)}" for k in _SINK_SUMMARY_FIELDS)
            lines.append(f"{sink['region']}/{sink['store']}: {fields}")
        return "; ".join(lines)

    # -- producing and judging ----------------------------------------------------------------

    def produce(
        self, config: GeneratorConfig, name: str = "ledger"
    ) -> tuple[GeneratorReport, list[LedgerRecord]]:
        """Run the event generator (blocking) with a ledger under the drill's folder."""
        from cluster.events import run_generator

        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{name}.jsonl"
        report = run_generator(config, self.bootstrap, DEFAULT_EVENTS_TOPIC, path)
        return report, read_ledger(path)

    def accepted(self) -> list[dict[str, Any]]:
        return verify.accepted_in_topic(self.bootstrap)

    def settle(
        self, timeout_s: float, targets: Sequence[verify.Target] | None = None
    ) -> tuple[list[str], float]:
        """Wait until the targets equal the oracle; (remaining mismatches, seconds waited)."""
        began = time.monotonic()
        problems = verify.wait_for_oracle(
            self.settings, self.secrets, self.accepted(), timeout_s=timeout_s, targets=targets
        )
        return problems, time.monotonic() - began

    def feature_requests(self, region: str, users: Sequence[str]) -> list[bytes]:
        """One raw ``POST /<region>/v1/features`` per user, every user_spend feature."""
        headers = {"x-api-key": self.api_key, "content-type": "application/json"}
        return [
            http_request(
                "127.0.0.1",
                self.serve_port,
                f"/{region}/v1/features",
                orjson.dumps({"entities": {"user": [u]}, "features": list(USER_FEATURES)}),
                headers,
            )
            for u in users
        ]


def busiest_users(ledger: Sequence[LedgerRecord], n: int) -> list[str]:
    counts: dict[str, int] = {}
    for record in ledger:
        if record.kind in ("valid", "out_of_order"):
            counts[record.user_id] = counts.get(record.user_id, 0) + 1
    return sorted(counts, key=lambda u: (-counts[u], u))[:n]


def rss_mib(pid: int) -> float:
    """Resident memory of a local process (the drills run on the head's machine)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
