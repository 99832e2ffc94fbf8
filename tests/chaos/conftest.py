"""The chaos drills get a stack of their own: they kill its broker, wipe its Redis and stall its
stores, which no other test should have to survive. It lives for the module and is purged after."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cluster.stack import Stack
from tests.integration.conftest import isolated_settings


@pytest.fixture(scope="module")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = isolated_settings(tmp_path_factory.mktemp("chaos"), with_ray=True)
    os.environ.update(settings.ray.client_env())  # the drills' ray.init must match the head
    stack = Stack.build(settings, environ={})
    try:
        stack.up()
        yield stack
    finally:
        stack.down(purge=True)
        leftovers = [s.name for s in stack.services if s.status().pid is not None]
        assert not leftovers, f"processes left running after the drills: {leftovers}"
