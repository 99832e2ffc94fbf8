"""The stack's serving settings and service: ingress on the head, serving after the head."""

from __future__ import annotations

import socket
import typing
from pathlib import Path

import pytest

from cluster.exceptions import MissingTool
from cluster.services import ray_head
from cluster.services.ray_head import RayHeadService
from cluster.serving import ServingService, base_urls
from cluster.settings import IngressMode, RaySettings, StackSettings
from cluster.settings_env import settings_from_env, settings_to_env
from cluster.stack import Stack
from features.errors import ConfigError
from serve_apps.deploy import INGRESS_MODES


def test_every_ingress_mode_of_the_settings_has_an_environment() -> None:
    assert set(typing.get_args(IngressMode)) == set(INGRESS_MODES)


def test_serving_is_on_from_the_environment_and_off_in_code(tmp_path: Path) -> None:
    assert settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path)}).with_serving is True
    assert StackSettings(state_dir=tmp_path).with_serving is False
    off = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path), "FRESHLINE_WITH_SERVING": "0"})
    assert off.with_serving is False
    no_ray = settings_from_env({"FRESHLINE_STATE_DIR": str(tmp_path), "FRESHLINE_WITH_RAY": "0"})
    assert no_ray.with_serving is False


def test_serving_without_ray_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="with_serving needs with_ray"):
        StackSettings(state_dir=tmp_path, with_ray=False, with_serving=True)


def test_ingress_comes_from_the_environment(tmp_path: Path) -> None:
    env = {"FRESHLINE_STATE_DIR": str(tmp_path)}
    pinned = settings_from_env(env | {"FRESHLINE_HAPROXY_STATS_PORT": "18404"})
    assert pinned.ray.haproxy_stats_port == 18404
    assert settings_from_env(settings_to_env(pinned)) == pinned
    drained = settings_from_env(env | {"FRESHLINE_SERVE_DRAIN_S": "3"})
    assert drained.ray.serve_drain_s == 3
    assert settings_from_env(settings_to_env(drained)) == drained
    with pytest.raises(ConfigError):
        settings_from_env(env | {"FRESHLINE_SERVE_DRAIN_S": "-1"})
    assert settings_from_env(env).ray.ingress == "haproxy-throughput"
    assert settings_from_env(env | {"FRESHLINE_SERVE_INGRESS": "proxy"}).ray.ingress == "proxy"
    with pytest.raises(ConfigError):
        settings_from_env(env | {"FRESHLINE_SERVE_INGRESS": "grpc"})


def test_the_head_starts_with_the_ingress_switches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_head.shutil, "which", lambda name: f"/opt/bin/{name}")
    head = RayHeadService(StackSettings(state_dir=tmp_path))
    env = head.node_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1"
    assert env["RAY_SERVE_HAPROXY_BINARY_PATH"] == "/opt/bin/haproxy"
    # Ray's fixed 8404/9101 would collide with another head on the machine: free ports instead.
    stats, metrics = env["RAY_SERVE_HAPROXY_STATS_PORT"], env["RAY_SERVE_HAPROXY_METRICS_PORT"]
    assert stats != "8404"
    assert metrics not in {"9101", stats}
    # So would Ray's fixed 8500 of the fallback proxy (bound with SO_REUSEPORT: the kernel would
    # split a replica-less app's requests between both heads' proxies).
    assert env["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"] not in {"8500", stats, metrics}
    fixed = RaySettings(
        haproxy_stats_port=18404, haproxy_metrics_port=19101, fallback_proxy_port=18500
    )
    pinned = RayHeadService(StackSettings(state_dir=tmp_path, ray=fixed)).ingress_env()
    assert (
        pinned["RAY_SERVE_HAPROXY_STATS_PORT"],
        pinned["RAY_SERVE_HAPROXY_METRICS_PORT"],
        pinned["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"],
    ) == ("18404", "19101", "18500")
    # The replicas' ports are this head's own range (Ray's default unless the settings say).
    assert (
        env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
        env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"],
    ) == ("30000", "31000")
    # A stopping replica drains for Serve's own default unless the settings say.
    assert "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S" not in env
    short = RayHeadService(StackSettings(state_dir=tmp_path, ray=RaySettings(serve_drain_s=3)))
    assert short.ingress_env()["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "3"
    own = RaySettings(ingress_ports=(32064, 32096))
    block = RayHeadService(StackSettings(state_dir=tmp_path, ray=own)).ingress_env()
    assert (
        block["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"],
        block["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"],
    ) == ("32064", "32096")
    proxy = RayHeadService(StackSettings(state_dir=tmp_path, ray=RaySettings(ingress="proxy")))
    assert proxy.ingress_env() == {}


def test_haproxy_ingress_without_haproxy_names_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ray_head.shutil, "which", lambda name: None)
    with pytest.raises(MissingTool, match="haproxy"):
        RayHeadService(StackSettings(state_dir=tmp_path)).ingress_env()


def test_serving_follows_the_head_only_when_asked_and_the_front_doors_come_last(
    tmp_path: Path,
) -> None:
    plain = Stack.build(StackSettings(state_dir=tmp_path), environ={})
    assert "serving" not in [s.name for s in plain.services]
    served = Stack.build(StackSettings(state_dir=tmp_path, with_serving=True), environ={})
    assert [s.name for s in served.services][-4:] == [
        "ray-head",
        "serving",
        "front-door-us-east",
        "front-door-eu-west",
    ]
    no_ray = Stack.build(StackSettings(state_dir=tmp_path, with_ray=False), environ={})
    assert not [s for s in no_ray.services if s.name.startswith("front-door")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serving_status_is_down_when_nothing_answers(tmp_path: Path) -> None:
    settings = StackSettings(state_dir=tmp_path, ray=RaySettings(serve_port=_free_port()))
    status = ServingService(settings).status()
    assert not status.healthy
    assert status.endpoint == ", ".join(base_urls(settings))
    assert "us-east" in status.endpoint and "eu-west" in status.endpoint
    assert ServingService(settings).stop() is False
