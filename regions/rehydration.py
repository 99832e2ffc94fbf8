"""Rehydration shared by several sink shards: who must replay before a bucket is complete.

A (region, store) may be written by several sink actors, each assigned a disjoint subset of the
changelog partitions (``actors.config.PipelineConfig.sink_shards``). A bucket that lost its data
(its marker is gone) holds keys of every partition, so it is complete again only once *every*
shard has replayed its own partitions into it. Each store keeps, beside a bucket's marker, the
rehydration in force: an ``epoch`` (a fresh id per loss), the shard ``count`` it was begun for and
the shards still ``pending``. Rules, the same for Redis and DynamoDB:

1. **Begin** (a shard found the bucket lost, or rehydrating with itself pending): if the marker is
   ``rehydrating`` under the same shard count, *join* that epoch; else start a new epoch with
   every shard pending. A bucket emptied again loses its pending set with its marker, so the
   next shard to notice starts over.
2. **Finish** (the shard's position reached the end offsets noted when it joined): remove itself
   from ``pending`` only if the epoch is still the one it joined, and the last one out marks the
   bucket ``ready``. A shard whose epoch was replaced replayed into data that was lost since:
   it learns nothing is finished and joins the new epoch.
3. A shard that finished its part while others replay sees ``REHYDRATING_ELSEWHERE`` and
   neither replays again nor declares anything. A rehydration begun for another shard count
   (the pipeline was resharded mid-replay) is started over by the first shard of the new count.

One shard (the default) is the same protocol with a pending set of one.
"""

from __future__ import annotations

from features.shards import Shard

READY = b"ready"
REHYDRATING = b"rehydrating"
# Not a stored marker: what a shard sees of a bucket still rehydrating whose own part is done.
REHYDRATING_ELSEWHERE = b"rehydrating-elsewhere"


def shard_view(
    marker: bytes | None, count: int | None, pending: bool, shard: Shard
) -> bytes | None:
    """What ``shard`` makes of a bucket: the marker, except that a rehydration of its own shard
    count that no longer waits for it is ``REHYDRATING_ELSEWHERE``."""
    if marker == REHYDRATING and count == shard.count and not pending:
        return REHYDRATING_ELSEWHERE
    return marker
