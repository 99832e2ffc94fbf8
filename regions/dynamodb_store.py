"""A region's DynamoDB online table: the durable tile replica and the serving fallback.

On-store layout (table schema: :func:`create_online_table`, its one definition): one item per
(key, field) with ``pk`` (S) = tile key, ``sk`` (S) = field, ``v`` (B) = payload without any
header, ``ver`` (N) = version, ``expires_at`` (N) = epoch seconds, rounded up, after which
DynamoDB's TTL may delete it. A delete removes the item (DeleteRequest); there are no tombstones.

Completeness marker: the item (``pk`` = ``fl:meta:epoch``, ``sk`` = ``state``), named like the
Redis marker. No tile key can be it: ``features.keys`` keys are ``fl:<tenant>:<view>:v<n>:<id>``,
four colons and an id that never holds one, while the marker's ``pk`` has two. It has no
``expires_at``, so TTL never deletes it. ``state`` is ``ready`` when the table holds the complete
changelog state and ``rehydrating`` while a sink replays the changelog into it (with that sink's
``epoch``); a table that came back empty (moto restarted, a recreated table) has no marker. Serving
(``serve_apps.fallback.DynamoStore``) reads the marker beside the tiles and raises
``StoreNotReady`` unless it is ``ready`` (:func:`require_ready`). Unlike the Redis apply script,
BatchWriteItem cannot carry a condition, so a sink batch may land in an emptied table before the
sink's next marker check notices the loss. That is harmless: the marker is missing, so nobody
reads the table as complete, and the rehydration that follows replays the whole compacted
changelog over it, that batch included.

A missing table (an endpoint that restarted before the stack recreated it, a deleted table) is
``StoreUnavailable``: the sink backs off and retries, it neither dies nor recreates the table.
Creating tables is the stack's job (``cluster.services.dynamodb.ensure_online_table``, run by
every start of the endpoint) or, on AWS, the infrastructure's: a data-path writer that created one
would need ``CreateTable`` rights, would hide a deleted or misnamed table behind a new empty one,
and would miss what the infrastructure sets (backups, encryption, alarms). Once the table exists
again, without a marker, the sink rehydrates it.

Monotonicity: BatchWriteItem cannot carry a condition, so unlike Redis this table does *not* refuse
an older version on its own. A batch is coalesced (the highest version per item wins, a delete wins
a tie), and the table stays monotone as long as one writer at a time owns a key and re-submits a
failed batch before sending later ones, which is how the stream actors are partitioned.

Errors: connect/read timeouts -> ``StoreTimeout``; other connection failures and a missing table
-> ``StoreUnavailable``; other error replies -> ``StoreRejected``. Throttling and UnprocessedItems
are retried with backoff, then surface as ``WriteThrottled`` carrying every write of the batch that
is not known to be stored.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Protocol

from botocore import exceptions as bex

from features.errors import StoreTimeout, StoreUnavailable
from features.shards import SOLE, Shard
from regions import rehydration
from regions.config import RegionConfig
from regions.exceptions import StoreNotReady, StoreRejected, WriteThrottled
from regions.rehydration import shard_view
from regions.resilience import Deadline, ExponentialBackoff, RetryPolicy, Sleep
from regions.tiles import TileWrite, coalesce

MAX_WRITE_ITEMS = 25  # BatchWriteItem's limit per call
MAX_GET_KEYS = 100  # BatchGetItem's limit per call
DEFAULT_RETRY = RetryPolicy(max_attempts=6, backoff=ExponentialBackoff(base_s=0.025, cap_s=1.0))
_THROTTLE_CODES = frozenset(
    {"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"}
)

Fields = dict[str, bytes]
Item = dict[str, Any]

MARKER_PK = "fl:meta:epoch"  # two colons: no features.keys key (four) can collide with it
MARKER_SK = "state"
STORE_READY = rehydration.READY
STORE_REHYDRATING = rehydration.REHYDRATING
_MARKER_KEY: Item = {"pk": {"S": MARKER_PK}, "sk": {"S": MARKER_SK}}
# "state" is a DynamoDB reserved word: expressions name the attributes through placeholders.
_MARKER_NAMES = {"#s": "state", "#e": "epoch", "#n": "shards", "#p": "pending"}


def _names(*placeholders: str) -> dict[str, str]:
    """The attribute names an expression uses: DynamoDB refuses a request naming unused ones."""
    return {p: _MARKER_NAMES[p] for p in placeholders}


class DynamoClient(Protocol):
    """The subset of a boto3 DynamoDB client this module calls."""

    def batch_write_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def batch_get_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def query(self, **kwargs: Any) -> dict[str, Any]: ...
    def get_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def put_item(self, **kwargs: Any) -> dict[str, Any]: ...
    def scan(self, **kwargs: Any) -> dict[str, Any]: ...
    def update_item(self, **kwargs: Any) -> dict[str, Any]: ...


ClientFactory = Callable[[RegionConfig], DynamoClient]


def create_online_table(client: Any, table: str) -> None:
    """Create the online table and wait until it is active: ``pk`` (S, hash) and ``sk`` (S,
    range), on-demand, TTL on ``expires_at``. The one definition of the schema; the stack calls it
    (``cluster.services.dynamodb.ensure_online_table``), the sinks never do (module docstring)."""
    client.create_table(
        TableName=table,
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "S"},
        ],
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table)
    client.update_time_to_live(
        TableName=table,
        TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"},
    )


def require_ready(store: str, state: bytes | None) -> None:
    """Raise ``StoreNotReady`` unless ``state`` (a marker read) says the table is complete."""
    if state != STORE_READY:
        shown = "missing" if state is None else repr(state)
        raise StoreNotReady(f"{store}: store marker {shown}, not complete")


class Throttled(Exception):
    """The whole call was throttled; handled like "every item unprocessed"."""


class _ConditionFailed(Exception):
    """A conditional write found the item otherwise; ``item`` is what it found (None: absent)."""

    def __init__(self, item: Item | None) -> None:
        super().__init__("condition failed")
        self.item = item


@contextmanager
def _store_errors(store: str) -> Iterator[None]:
    try:
        yield
    except (bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
        raise StoreTimeout(f"{store}: no answer in time") from exc
    except (bex.ConnectionError, bex.HTTPClientError) as exc:
        raise StoreUnavailable(f"{store}: {type(exc).__name__}: {exc}") from exc
    except bex.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code in _THROTTLE_CODES:
            raise Throttled from exc
        if code == "ConditionalCheckFailedException":
            raise _ConditionFailed(exc.response.get("Item")) from exc
        if code == "ResourceNotFoundException":
            # Retryable: the stack (or the infrastructure) recreates it; see the module docstring.
            raise StoreUnavailable(f"{store}: table missing: {exc}") from exc
        raise StoreRejected(f"{store}: {exc}") from exc
    except bex.BotoCoreError as exc:
        raise StoreRejected(f"{store}: {type(exc).__name__}: {exc}") from exc


class StoreBase:
    """What the writer and the reader share: a lazily built client, retry policy and clocks."""

    def __init__(
        self,
        region: RegionConfig,
        table: str,
        client_factory: ClientFactory,
        *,
        retry: RetryPolicy,
        sleep: Sleep,
        wall_clock: Callable[[], float],
    ) -> None:
        self.name = f"dynamodb-{region.name}"
        self._region = region
        self._table = table
        self._factory = client_factory
        self._client: DynamoClient | None = None
        self._retry = retry
        self._sleep = sleep
        self._wall_clock = wall_clock

    def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        if self._client is None:
            self._client = self._factory(self._region)
        with _store_errors(self.name):
            result: dict[str, Any] = getattr(self._client, operation)(**kwargs)
            return result

    def _once(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        """One call of a marker operation: the caller (the sink's loop) retries on its own pace."""
        try:
            return self._call(operation, **kwargs)
        except Throttled as exc:
            raise StoreUnavailable(f"{self.name}: throttled") from exc

    def marker_read(self) -> dict[str, Any]:
        # Strongly consistent: the marker is one item, and a sink must see its own last write.
        return {"TableName": self._table, "Key": _MARKER_KEY, "ConsistentRead": True}

    def _backoff_or_stop(self, attempt: int, deadline: Deadline | None) -> float | None:
        """The delay before the next attempt, or None when retries or the budget are spent."""
        delay = self._retry.backoff.delay(attempt)
        if attempt >= self._retry.max_attempts:
            return None
        if deadline is not None and delay >= deadline.remaining():
            return None
        return delay


def state_of(item: Item | None) -> bytes | None:
    if item is None or "state" not in item:
        return None
    return str(item["state"]["S"]).encode()


class DynamoTileWriter(StoreBase):
    """Writes tile batches with BatchWriteItem, 25 items per call.

    Invariants: the batch is coalesced first, so no call holds two writes of one item; every write
    is either stored or listed in the raised ``WriteThrottled.unwritten``, never dropped; at most
    ``retry.max_attempts`` calls per chunk, never sleeping past the deadline.

    ``seeding`` (the default: tools and tests that write a complete state directly): after the
    first stored batch the table is marked ``ready`` if it has no marker (never over a sink's
    ``rehydrating``). The sinks pass ``seeding=False``: the marker is theirs to manage through
    :meth:`store_state`, :meth:`begin_rehydration` and :meth:`mark_ready` (``actors.sink``), and a
    batch never marks anything, since it may land in a table that just lost its data.
    """

    def __init__(
        self,
        region: RegionConfig,
        table: str,
        client_factory: ClientFactory,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        sleep: Sleep = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        seeding: bool = True,
        shard: Shard = SOLE,
    ) -> None:
        super().__init__(
            region, table, client_factory, retry=retry, sleep=sleep, wall_clock=wall_clock
        )
        self._seeding = seeding
        self._shard = shard
        self._epoch: str | None = None  # of the rehydration this writer joined, if any

    def store_state(self) -> bytes | None:
        """The marker: ``STORE_READY``, ``STORE_REHYDRATING``, or ``None`` (data lost or new).
        A missing table raises ``StoreUnavailable``: nothing can be rehydrated into it yet."""
        return state_of(self._marker_item())

    def _marker_item(self) -> Item | None:
        item: Item | None = self._once("get_item", **self.marker_read()).get("Item")
        return item

    def shard_state(self) -> bytes | None:
        """The marker as this writer's sink shard sees it (``regions.rehydration``):
        ``REHYDRATING_ELSEWHERE`` when its own part of the rehydration is done. A rehydration
        that nobody is pending for any more (a shard died between its two updates in
        :meth:`mark_ready`) is everyone's to finish."""
        item = self._marker_item()
        if item is None:
            return None
        count = int(item["shards"]["N"]) if "shards" in item else None
        pending = item.get("pending", {}).get("NS")
        mine = pending is None or str(self._shard.index) in pending
        return shard_view(state_of(item), count, mine, self._shard)

    def begin_rehydration(self) -> None:
        """Mark the table incomplete under a new epoch with every shard pending, or join the
        epoch other shards of the same count began (``regions.rehydration``)."""
        epoch = uuid.uuid4().hex
        marker = {
            **_MARKER_KEY,
            "state": {"S": STORE_REHYDRATING.decode()},
            "epoch": {"S": epoch},
            "shards": {"N": str(self._shard.count)},
            "pending": {"NS": [str(i) for i in range(self._shard.count)]},
            "since": {"N": str(int(self._wall_clock()))},  # for an operator reading the item
        }
        try:
            self._once(
                "put_item",
                TableName=self._table,
                Item=marker,
                # Join a rehydration of the same shard count; start one over anything else.
                ConditionExpression=(
                    "NOT (#s = :rehydrating AND #n = :count AND attribute_exists(#e))"
                ),
                ExpressionAttributeNames=_names("#s", "#n", "#e"),
                ExpressionAttributeValues={
                    ":rehydrating": {"S": STORE_REHYDRATING.decode()},
                    ":count": {"N": str(self._shard.count)},
                },
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _ConditionFailed as joined:
            found = joined.item or self._marker_item()
            if not found or "epoch" not in found:  # gone meanwhile: the next check starts over
                self._epoch = None
                return
            epoch = str(found["epoch"]["S"])
        self._epoch = epoch

    def mark_ready(self) -> bool:
        """This shard's replay is complete: leave the epoch's pending set, and the last shard out
        marks the table ``ready`` (conditional updates, both on the epoch
        :meth:`begin_rehydration` joined). ``False`` (nothing changed) when the marker is gone or
        another epoch's, i.e. the table was emptied again; ``True`` too when it is already
        ``ready``."""
        if self._epoch is None:
            return self.store_state() == STORE_READY
        values = {
            ":rehydrating": {"S": STORE_REHYDRATING.decode()},
            ":epoch": {"S": self._epoch},
        }
        try:
            left = self._once(
                "update_item",
                TableName=self._table,
                Key=_MARKER_KEY,
                UpdateExpression="DELETE #p :me",
                ConditionExpression="#s = :rehydrating AND #e = :epoch",
                ExpressionAttributeNames=_names("#p", "#s", "#e"),
                ExpressionAttributeValues={**values, ":me": {"NS": [str(self._shard.index)]}},
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
            if "pending" in left.get("Attributes", {}):
                return True  # other shards still replay; the last one out declares
            self._once(
                "update_item",
                TableName=self._table,
                Key=_MARKER_KEY,
                UpdateExpression="SET #s = :ready REMOVE #e, #p, #n",
                ConditionExpression=(
                    "#s = :rehydrating AND #e = :epoch AND attribute_not_exists(#p)"
                ),
                ExpressionAttributeNames=_MARKER_NAMES,
                ExpressionAttributeValues={**values, ":ready": {"S": STORE_READY.decode()}},
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except _ConditionFailed as failed:
            return state_of(failed.item) == STORE_READY
        return True

    def _seed_marker(self) -> None:
        # A marker already there is ready, or a sink's rehydration that only that sink may end.
        with suppress(_ConditionFailed):
            self._once(
                "put_item",
                TableName=self._table,
                Item={**_MARKER_KEY, "state": {"S": STORE_READY.decode()}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        self._seeding = False

    def apply(self, batch: Sequence[TileWrite], deadline: Deadline | None = None) -> int:
        """Store the batch; returns the number of items written (after coalescing).

        A ``StoreUnavailable``/``StoreTimeout`` that outlives the retries may come after earlier
        chunks were stored: re-submit the whole batch (puts and deletes are idempotent).
        """
        writes = coalesce(batch)
        chunks = [writes[i : i + MAX_WRITE_ITEMS] for i in range(0, len(writes), MAX_WRITE_ITEMS)]
        for n, chunk in enumerate(chunks):
            try:
                self._write_chunk(chunk, deadline)
            except WriteThrottled as exc:
                # Later chunks were never sent: they are unwritten too.
                rest = [w for later in chunks[n + 1 :] for w in later]
                raise WriteThrottled(self.name, [*exc.unwritten, *rest], exc.retry_after) from exc
        if writes and self._seeding:
            self._seed_marker()  # after the data: a reader never sees ready before it
        return len(writes)

    def _write_chunk(self, chunk: Sequence[TileWrite], deadline: Deadline | None) -> None:
        by_item = {(w.key, w.field): w for w in chunk}
        pending = list(chunk)
        attempt = 0
        while pending:
            attempt += 1
            pending = self._attempt(pending, by_item, attempt, deadline)
            if not pending:
                return
            delay = self._backoff_or_stop(attempt, deadline)
            if delay is None:
                retry_after = self._retry.backoff.delay(attempt + 1)
                raise WriteThrottled(self.name, pending, retry_after)
            self._sleep(delay)

    def _attempt(
        self,
        pending: list[TileWrite],
        by_item: Mapping[tuple[str, str], TileWrite],
        attempt: int,
        deadline: Deadline | None,
    ) -> list[TileWrite]:
        """One BatchWriteItem of ``pending``; returns what is still unwritten."""
        requests = [self._request(w) for w in pending]
        try:
            reply = self._call("batch_write_item", RequestItems={self._table: requests})
        except Throttled:
            return pending
        except self._retry.retry_on:
            if self._backoff_or_stop(attempt, deadline) is None:
                raise
            return pending
        left = reply.get("UnprocessedItems", {}).get(self._table, [])
        return [by_item[_item_of(request)] for request in left]

    def _request(self, write: TileWrite) -> Item:
        key = {"pk": {"S": write.key}, "sk": {"S": write.field}}
        if write.value is None:
            return {"DeleteRequest": {"Key": key}}
        # Rounded up so the replica never expires before the Redis copy it backs.
        expires_at = math.ceil(self._wall_clock() + write.ttl_ms / 1000.0)
        item = {
            **key,
            "v": {"B": write.value},
            "ver": {"N": str(write.version)},
            "expires_at": {"N": str(expires_at)},
        }
        return {"PutRequest": {"Item": item}}


def _item_of(request: Item) -> tuple[str, str]:
    if "PutRequest" in request:
        item = request["PutRequest"]["Item"]
    else:
        item = request["DeleteRequest"]["Key"]
    return item["pk"]["S"], item["sk"]["S"]
