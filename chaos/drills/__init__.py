"""The drills, by the name ``freshline chaos run <name>`` takes. Each module's docstring says what
the drill injects and what it must show; ``docs/runbooks/<name>.md`` is the operator's side."""

from __future__ import annotations

from chaos.drills import consumer_kill, poison_flood, redis_kill, slow_sink
from chaos.drills.base import Drill

DRILLS: dict[str, Drill] = {
    d.name: d
    for d in (
        Drill(
            "redis-kill",
            "kill a region's Redis under load; it comes back empty",
            redis_kill.run,
            True,
        ),
        Drill(
            "consumer-kill",
            "SIGKILL consumer actors three times mid-stream",
            consumer_kill.run,
            True,
        ),
        Drill("slow-sink", "stall a region's Redis writes under full ingest", slow_sink.run, True),
        Drill(
            "poison-flood", "10 % malformed and late events in the stream", poison_flood.run, True
        ),
    )
}
