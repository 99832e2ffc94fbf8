"""Errors of the training package (each a :class:`~features.errors.FreshlineError`)::

TrainingError           root: everything this package raises on purpose
├── SpineError          the spine is unusable (missing column, bad timestamp, unreadable file);
│                       also a DataError
├── FeatureRefError     a feature is not ``view:feature`` of the catalog; also a ConfigError
└── ValidatorStateError the validator's cursor file is unreadable; also a DataError
"""

from __future__ import annotations

from features.errors import ConfigError, DataError, FreshlineError


class TrainingError(FreshlineError):
    """Root of every error this package raises on purpose."""


class SpineError(TrainingError, DataError):
    """The spine cannot be used as given."""


class FeatureRefError(TrainingError, ConfigError):
    """A feature reference does not name a feature of the catalog."""


class ValidatorStateError(TrainingError, DataError):
    """A continuous validator's saved cursor and totals cannot be read."""
