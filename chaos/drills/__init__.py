"""The drills, by the name ``freshline chaos run <name>`` takes. Each module's docstring says what
the drill injects and what it must show; ``docs/runbooks/<name>.md`` is the operator's side."""

from __future__ import annotations

from chaos.drills import (
    alerts,
    broker_restart,
    consumer_kill,
    dynamodb_down,
    index_kill,
    poison_flood,
    redis_kill,
    region_down,
    region_evacuation,
    region_partition,
    serve_overload,
    slow_sink,
)
from chaos.drills.base import Drill

_ALL = (
    # name, what it injects, the drill, whether CI runs its quick version
    ("redis-kill", "kill a region's Redis under load; it comes back empty", redis_kill, True),
    ("consumer-kill", "SIGKILL consumer actors three times mid-stream", consumer_kill, True),
    ("slow-sink", "stall a region's Redis writes under full ingest", slow_sink, True),
    ("poison-flood", "10 % malformed and late events in the stream", poison_flood, True),
    (
        "index-kill",
        "SIGKILL an embedding index actor mid-stream, after a snapshot",
        index_kill,
        True,
    ),
    (
        "region-evacuation",
        "every store of a region hangs; clients fail over",
        region_evacuation,
        False,
    ),
    (
        "region-down",
        "every us-east Serve replica killed; its front door fails reads over to eu-west",
        region_down,
        False,
    ),
    ("broker-restart", "SIGKILL the Kafka broker for 10 s, then restart it", broker_restart, False),
    ("serve-overload", "serving past capacity, and a replica killed", serve_overload, False),
    ("dynamodb-down", "a region's DynamoDB endpoint hangs for a minute", dynamodb_down, False),
    (
        "region-partition",
        "a region's Redis slowed, then cut off, from serving",
        region_partition,
        False,
    ),
    (
        "alerts",
        "the shipped alert rules in a real Prometheus: a Redis hang, a stalled sink",
        alerts,
        False,
    ),
)

DRILLS: dict[str, Drill] = {
    name: Drill(name, summary, module.run, in_ci) for name, summary, module, in_ci in _ALL
}
