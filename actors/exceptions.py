"""Errors of the pipeline's actors (branches of ``features.errors``)::

TransportError
└── ConsumerWedged   a Kafka client made no progress it should have; its actor exits and Ray
                     rebuilds it (crash-only, see ``actors.runtime``)
"""

from __future__ import annotations

from features.errors import TransportError


class ConsumerWedged(TransportError):
    """A group member that its group gave no partitions for too long: its client is stuck."""
