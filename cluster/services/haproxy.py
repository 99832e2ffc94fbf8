"""One front door per region: Debian's ``haproxy`` run in the foreground (``-db``) as one tracked
process, configured by ``cluster.services.haproxy_config`` (which explains the design)."""

from __future__ import annotations

import shutil
import urllib.request

from cluster.exceptions import MissingTool
from cluster.process import ManagedProcess
from cluster.services.base import Port, ProcessService
from cluster.services.haproxy_config import (
    ERRORFILE,
    MONITOR_URI,
    FrontDoorPlan,
    refusal_file,
    render,
)
from cluster.settings import StackSettings

_INSTALL_HAPROXY = "install Debian's package: `apt-get install -y haproxy` (make setup does this)"


def front_door_urls(settings: StackSettings) -> dict[str, str]:
    """Each region's front-door base URL, in the topology's order (home region first)."""
    return {
        region: f"http://127.0.0.1:{port}"
        for region, port in zip(settings.topology.names, settings.front_door.ports, strict=True)
    }


class FrontDoorService(ProcessService):
    kind = "haproxy"
    ready_timeout_s = 15.0
    stop_timeout_s = 10.0

    def __init__(self, settings: StackSettings, region: str) -> None:
        name = f"front-door-{region}"
        super().__init__(name, ManagedProcess(name, settings.run_dir, settings.log_dir))
        names = list(settings.topology.names)
        fd = settings.front_door
        self._port = fd.ports[names.index(region)]
        self._url = front_door_urls(settings)[region]
        self._home = settings.state_dir / "haproxy" / region
        self.plan = FrontDoorPlan(
            region=region,
            bind_port=self._port,
            serve_port=settings.ray.serve_port,
            failover=tuple(r.name for r in settings.topology.failover_order(region)),
            maxconn=fd.maxconn,
            queue_ms=fd.queue_ms,
            retry_after_s=fd.retry_after_s,
            check_ms=fd.check_ms,
            live_timeout_ms=fd.live_timeout_ms,
            errors_dir=self._home,
        )

    @property
    def endpoint(self) -> str:
        return self._url

    def ports(self) -> list[Port]:
        return [Port(self.name, "127.0.0.1", self._port)]

    def describe(self) -> str:
        return f"{self.plan.region} -> Serve :{self.plan.serve_port}, maxconn {self.plan.maxconn}"

    def launch(self) -> None:
        haproxy = shutil.which("haproxy")
        if haproxy is None:
            raise MissingTool("haproxy", _INSTALL_HAPROXY)
        self._home.mkdir(parents=True, exist_ok=True)
        (self._home / ERRORFILE).write_bytes(refusal_file(self.plan.retry_after_s))
        config = self._home / "haproxy.cfg"
        config.write_text(render(self.plan))
        self._proc.spawn([haproxy, "-db", "-f", str(config)], cwd=self._home)

    def purge(self) -> None:
        shutil.rmtree(self._home, ignore_errors=True)

    def probe(self) -> str | None:
        try:
            with urllib.request.urlopen(  # noqa: S310 - a fixed http://127.0.0.1 URL
                f"{self.endpoint}{MONITOR_URI}", timeout=2.0
            ) as response:
                return None if response.status == 200 else f"HTTP {response.status}"
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
