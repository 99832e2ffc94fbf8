"""The demo event generator: synthetic card transactions (anomalies on purpose) into Kafka.

``synth`` is pure (no Kafka, no clock of its own); ``producer`` sends and writes acknowledged
events to the ``ledger``; ``runner.run_generator`` paces one run (``pacing``);
``python -m cluster.events`` is its CLI. kafka-python is imported only when a real producer is
built, so importing this package stays cheap.
"""

from cluster.events.ledger import LedgerRecord, read_ledger
from cluster.events.runner import Clock, GeneratorProgress, GeneratorReport, run_generator
from cluster.events.synth import EventKind, EventSynthesizer, GeneratorConfig, SyntheticEvent

__all__ = [
    "Clock",
    "EventKind",
    "EventSynthesizer",
    "GeneratorConfig",
    "GeneratorProgress",
    "GeneratorReport",
    "LedgerRecord",
    "SyntheticEvent",
    "read_ledger",
    "run_generator",
]
