"""Ports of a private stack: its services and its Serve replicas never share a range with another
stack's replicas."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cluster import isolated
from cluster.isolated import free_ingress_block, free_ports, isolated_settings


def test_service_ports_stay_out_of_every_replica_range(tmp_path: Path) -> None:
    settings = isolated_settings(tmp_path, with_ray=True)
    first, end = settings.ray.ingress_ports
    default_replicas = range(30000, 31000)  # Ray's own range, the default stack's
    for port in free_ports(50):
        assert port not in default_replicas
        assert not first <= port < end
    assert end - first == isolated._INGRESS_BLOCK_PORTS
    assert first in isolated._INGRESS_BLOCKS


def test_a_block_where_something_listens_is_not_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        # Two blocks: the one holding the listener must never be drawn.
        busy, free = port - port % 4, port - port % 4 + 4
        monkeypatch.setattr(isolated, "_INGRESS_BLOCKS", range(busy, free + 4, 4))
        monkeypatch.setattr(isolated, "_INGRESS_BLOCK_PORTS", 4)
        if not all(isolated.port_is_free("127.0.0.1", p) for p in range(free, free + 4)):
            pytest.skip("the neighbouring ports are taken on this machine")
        assert {free_ingress_block() for _ in range(20)} == {(free, free + 4)}


def test_ports_drawn_beside_unstarted_settings_never_repeat_theirs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A narrow range makes a repeat near-certain without ``avoid``: 17 ports out of 20.
    monkeypatch.setattr(isolated, "_ISOLATED_PORTS", range(31000, 31020))
    settings = isolated_settings(tmp_path, with_ray=True)
    taken = {port for _, port in settings.listeners()}
    extra = free_ports(3, avoid=taken)
    assert len(set(extra)) == 3
    assert not taken & set(extra), (sorted(taken), extra)
