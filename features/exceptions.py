"""Errors of the pure domain package, each a subclass of a branch of :mod:`features.errors`::

    ConfigError
    ├── CatalogError            (in features.errors) raised by catalog, durations and tile rules
    └── NotMergeable            a sequential aggregation (cusum) was asked to merge partial states
    DataError
    ├── InvalidEntityId         an entity id that cannot be turned into a safe online-store key
    ├── UnencodableValue        NaN, infinity, an out-of-range int or an unsupported type
    ├── CorruptState            bytes that do not decode to a valid state, sketch or key
    └── IncompatibleStates      two states that cannot be merged (e.g. HLLs of different precision)

``NotMergeable`` is a configuration error, not a data error: it means a pipeline routed a
non-tiled feature through the tiled path, which the same inputs will always repeat.
"""

from __future__ import annotations

from features.errors import ConfigError, DataError


class NotMergeable(ConfigError):
    """The aggregation has no merge: its state depends on arrival order across all events."""


class InvalidEntityId(DataError):
    """The entity id is empty, too long, not text or contains control characters."""


class UnencodableValue(DataError):
    """The value cannot be stored: NaN, infinity, an int beyond 64 bits or an unsupported type."""


class CorruptState(DataError):
    """Stored bytes that do not decode to a valid state, sketch or key."""


class IncompatibleStates(DataError):
    """Two partial states that cannot be merged, such as sketches of different precisions."""
