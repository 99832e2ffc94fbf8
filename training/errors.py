"""Errors of the training package; one root so callers can catch everything it raises.

TrainingError
├── SpineError      the spine is unusable (missing column, bad timestamp type, unreadable file)
└── FeatureRefError a requested feature is not ``view:feature`` of the catalog, or views clash
"""

from __future__ import annotations


class TrainingError(Exception):
    """Root of every error this package raises on purpose."""


class SpineError(TrainingError):
    """The spine cannot be used as given."""


class FeatureRefError(TrainingError):
    """A feature reference does not name a feature of the catalog."""
