"""Errors of the demo event generator. Each derives from a branch of :mod:`features.errors`::

ConfigError
└── GeneratorConfigError   a generator setting is invalid; ``field`` names it
DataError
└── LedgerCorrupt          a ledger line that does not parse (a torn last line is tolerated)
TransportError
├── BrokerUnavailable      no Kafka broker answered at the bootstrap address
└── DeliveryFailed         some events were not acknowledged; raised after the flush, never
                           instead of it, so every acknowledged event is in the ledger first
"""

from __future__ import annotations

from pathlib import Path

from features.errors import ConfigError, DataError, TransportError


class GeneratorConfigError(ConfigError):
    """A generator setting failed validation; the message and ``field`` name the setting."""


class LedgerCorrupt(DataError):
    def __init__(self, path: Path, line_no: int, detail: str) -> None:
        super().__init__(f"{path}:{line_no}: {detail}")
        self.path = path
        self.line_no = line_no


class BrokerUnavailable(TransportError):
    def __init__(self, bootstrap: str, detail: str) -> None:
        super().__init__(f"no Kafka broker answered at {bootstrap}: {detail}")
        self.bootstrap = bootstrap


class DeliveryFailed(TransportError):
    """``failed`` events were not acknowledged. They may or may not be in the topic (an ack can be
    lost after the write); the ledger holds exactly the acknowledged ones."""

    def __init__(self, failed: int, acked: int, first_error: str) -> None:
        super().__init__(
            f"{failed} events were not acknowledged ({acked} were); first error: {first_error}"
        )
        self.failed = failed
        self.acked = acked
        self.first_error = first_error
