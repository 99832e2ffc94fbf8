"""Serving defaults that the stack settings share, in a module that imports nothing: the CLI
reads them at start, before any store client is loaded."""

from __future__ import annotations

from typing import Final

DEFAULT_REPLICAS: Final = 2
"""Serve replicas per region app: two, so that losing one (a crash, a node) leaves the region a
warm replica instead of a cold start under full load; the serve-overload drill kills one."""

READY_BUDGET_S: Final = 0.5
"""How long ``GET /v1/ready`` reads through the fallback chain before answering 503. A health
checker must wait longer than this (the front door's ``timeout check``): one that hangs up first
cancels the read, and learns nothing."""
