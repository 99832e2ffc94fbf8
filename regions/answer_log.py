"""A sampled share of serving's answers, logged to the region's Redis as a capped stream.

Serving hands every value of a native answer to :meth:`AnswerLog.offer` after the response is
built. Only the values of *sampled* entities are kept (:func:`sampled`: a hash of the entity id
below ``share``, so an entity is either always or never logged and its answers can be compared
over time); they are written with one pipelined ``XADD <key> MAXLEN ~ <maxlen>`` per value in a
task of their own. The request never waits for it and never fails because of it: a failed write,
or an offer while ``max_pending`` writes are still out, is counted (``failed``, ``dropped``), not
raised.

Stream key: ``fl:<tenant>:answers:v1`` (inside the ``fl:*`` key space of the ACL users). One
entry per value, every field a string::

    request_id region store as_of_ms entity entity_id view feature value status event_time_ms
    watermark_ms

``value`` is JSON (ints stay ints, ``null`` for no value); ``event_time_ms`` is empty when the
value had none. ``watermark_ms`` is the answer's *served watermark* for the entity's view: the
newest event time among the values the answer gave for that entity and view (exact when the view
has a ``last`` feature, else a tile start, a lower bound), empty when none had one; the validator
recomputes the value as of it to tell a store that lags from one that is wrong. Entries written
before it existed decode with ``watermark_ms`` None. The validator (``cluster.validator_job``)
reads them back with :func:`read_answers` or, from a cursor, :func:`read_answers_after`.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from features.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_SHARE = 0.01
DEFAULT_MAXLEN = 100_000
DEFAULT_MAX_PENDING = 64
_READ_PAGE = 1_000
_HASH_SPACE = 2**64

FIELDS = (
    "request_id",
    "region",
    "store",
    "as_of_ms",
    "entity",
    "entity_id",
    "view",
    "feature",
    "value",
    "status",
    "event_time_ms",
)


class AnswerLogError(DataError):
    """A stream entry that is not an answer entry (missing field, bad number or JSON)."""


def stream_key(tenant: str) -> str:
    """The answer stream of ``tenant`` in a region's Redis."""
    return f"fl:{tenant}:answers:v1"


@dataclass(frozen=True)
class AnswerEntry:
    """One served value: what was answered, when, for whom and by which store."""

    request_id: str
    region: str
    store: str
    as_of_ms: int
    entity: str
    entity_id: str
    view: str
    feature: str
    value: Any
    status: str
    event_time_ms: int | None
    watermark_ms: int | None = None

    @property
    def ref(self) -> str:
        """The feature's ``view:feature`` name."""
        return f"{self.view}:{self.feature}"


def sampled(entity_id: str, share: float) -> bool:
    """Whether ``entity_id``'s answers are logged at ``share`` (0 never, 1 always): the same id
    gives the same answer in every replica and process (a keyed hash, not Python's ``hash``)."""
    if share <= 0:
        return False
    digest = hashlib.blake2b(entity_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < share * _HASH_SPACE


def encode(entry: AnswerEntry) -> dict[str, str]:
    """The stream fields of ``entry``."""
    return {
        "request_id": entry.request_id,
        "region": entry.region,
        "store": entry.store,
        "as_of_ms": str(entry.as_of_ms),
        "entity": entry.entity,
        "entity_id": entry.entity_id,
        "view": entry.view,
        "feature": entry.feature,
        "value": orjson.dumps(entry.value).decode(),
        "status": entry.status,
        "event_time_ms": _optional_int(entry.event_time_ms),
        "watermark_ms": _optional_int(entry.watermark_ms),
    }


def _optional_int(value: int | None) -> str:
    return "" if value is None else str(value)


def decode(fields: Mapping[bytes | str, bytes | str]) -> AnswerEntry:
    """The entry stored as ``fields``; :class:`AnswerLogError` when it is not one."""
    text = {_text(k): _text(v) for k, v in fields.items()}
    missing = [name for name in FIELDS if name not in text]
    if missing:
        raise AnswerLogError(f"answer entry lacks {', '.join(missing)}")
    try:
        as_of = int(text["as_of_ms"])
        event_time = int(text["event_time_ms"]) if text["event_time_ms"] else None
        raw_watermark = text.get("watermark_ms", "")
        watermark = int(raw_watermark) if raw_watermark else None
        value = orjson.loads(text["value"])
    except (ValueError, orjson.JSONDecodeError) as exc:
        raise AnswerLogError(f"answer entry has a bad number or value: {exc}") from None
    return AnswerEntry(
        request_id=text["request_id"],
        region=text["region"],
        store=text["store"],
        as_of_ms=as_of,
        entity=text["entity"],
        entity_id=text["entity_id"],
        view=text["view"],
        feature=text["feature"],
        value=value,
        status=text["status"],
        event_time_ms=event_time,
        watermark_ms=watermark,
    )


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


class AnswerLog:
    """Fire-and-forget writer of sampled answers; runs on the replica's event loop.

    ``client`` is a ``redis.asyncio.Redis`` whose user may ``XADD`` to the stream key."""

    def __init__(
        self,
        client: Any,
        key: str,
        share: float,
        *,
        maxlen: int = DEFAULT_MAXLEN,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        if not 0 <= share <= 1:
            raise ValueError("share must be between 0 and 1")
        if maxlen < 1 or max_pending < 1:
            raise ValueError("maxlen and max_pending must be at least 1")
        self.key, self.share, self.maxlen = key, share, maxlen
        self._client = client
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[None]] = set()
        self.written = self.failed = self.dropped = 0

    def wants(self, entity_id: str) -> bool:
        """Whether ``entity_id`` is sampled (callers skip building entries of the others)."""
        return sampled(entity_id, self.share)

    def offer(self, entries: Iterable[AnswerEntry]) -> int:
        """Start writing the sampled ones of ``entries``; returns how many. Never raises."""
        if self.share <= 0:
            return 0
        verdict: dict[str, bool] = {}
        picked = []
        for entry in entries:
            keep = verdict.get(entry.entity_id)
            if keep is None:
                keep = verdict[entry.entity_id] = sampled(entry.entity_id, self.share)
            if keep:
                picked.append(entry)
        if not picked:
            return 0
        if len(self._pending) >= self._max_pending:
            self.dropped += len(picked)
            return 0
        task = asyncio.get_running_loop().create_task(self._write(picked))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return len(picked)

    async def drain(self) -> None:
        """Wait for the writes already started (tests, shutdown)."""
        while self._pending:
            await asyncio.gather(*list(self._pending))

    async def _write(self, entries: list[AnswerEntry]) -> None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for entry in entries:
                pipe.xadd(self.key, encode(entry), maxlen=self.maxlen, approximate=True)
            await pipe.execute()
        except Exception as exc:  # a log write never fails or slows an answer
            self.failed += len(entries)
            log.debug("answer log write of %d entries failed: %s", len(entries), exc)
            return
        self.written += len(entries)


def read_answers(client: Any, key: str, *, since_ms: int = 0) -> list[AnswerEntry]:
    """Every entry of the stream ``key`` added at or after ``since_ms`` (a sync client), oldest
    first; entries that do not decode are skipped and logged."""
    entries, _ = read_answers_after(client, key, after=None, since_ms=since_ms)
    return entries


def read_answers_after(
    client: Any,
    key: str,
    *,
    after: str | None,
    since_ms: int = 0,
    until_ms: int | None = None,
) -> tuple[list[AnswerEntry], str | None]:
    """The entries of ``key`` after the stream id ``after`` (or from ``since_ms`` when None) up
    to ``until_ms`` included, oldest first, and the id of the last entry read (``after`` when
    there was none): the cursor to resume from. Entries that do not decode are skipped, logged,
    and passed by the cursor."""
    out: list[AnswerEntry] = []
    start = f"{since_ms}-0" if after is None else "(" + after
    end = "+" if until_ms is None else str(until_ms)
    last = after
    while True:
        page = client.xrange(key, min=start, max=end, count=_READ_PAGE)
        for _, fields in page:
            try:
                out.append(decode(fields))
            except AnswerLogError as exc:
                log.warning("skipped an answer log entry: %s", exc)
        if page:
            last = _text(page[-1][0])
        if len(page) < _READ_PAGE:
            return out, last
        start = "(" + _text(page[-1][0])
