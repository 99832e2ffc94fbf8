"""``stack down`` kills Serve's HAProxy when it outlived the head (a real haproxy process)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from cluster.process import free_port, port_holder
from cluster.services.ray_head import stop_orphaned_ingress


def _haproxy(config_dir: Path, port: int) -> subprocess.Popen[bytes]:
    config_dir.mkdir(parents=True)
    config = config_dir / "haproxy.cfg"
    config.write_text(
        "defaults\n  mode http\n  timeout client 1s\n  timeout server 1s\n  timeout connect 1s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n  http-request return status 200\n"
    )
    binary = shutil.which("haproxy")
    assert binary, "haproxy is installed by make setup"
    proc = subprocess.Popen([binary, "-db", "-f", str(config)])
    deadline = time.monotonic() + 10
    while port_holder("127.0.0.1", port) is None:
        assert time.monotonic() < deadline and proc.poll() is None, "haproxy did not start"
        time.sleep(0.05)
    return proc


def test_serves_orphaned_haproxy_on_the_serve_port_is_killed(tmp_path: Path) -> None:
    port = free_port()
    proc = _haproxy(tmp_path / "haproxy-serve" / "0123abcd", port)
    try:
        assert stop_orphaned_ingress(port)
        assert proc.wait(timeout=5) != 0
        assert port_holder("127.0.0.1", port) is None
    finally:
        proc.kill()


def test_any_other_holder_of_the_port_is_left_alone(tmp_path: Path) -> None:
    """Another haproxy (a front door's, whose config lives elsewhere) and a plain listener."""
    port = free_port()
    proc = _haproxy(tmp_path / "front-door", port)
    try:
        assert not stop_orphaned_ingress(port)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not stop_orphaned_ingress(port)
        assert port_holder("127.0.0.1", port) is not None
    assert not stop_orphaned_ingress(port)  # nobody holds it
