"""The values of a native answer body as :class:`regions.answer_log.AnswerEntry` rows.

Read from the response body (both the ``rows`` and the ``columns`` shape of
:mod:`serve_apps.responses`), not from the read path's internals: what is logged is what the
client was sent.

Each entry carries the answer's served watermark for its entity and view: the newest event time
among the values this answer gave for that (entity, view) (``regions.answer_log``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

from regions.answer_log import AnswerEntry


class _Common(NamedTuple):
    request_id: str
    region: str
    as_of_ms: int


def answer_entries(body: Mapping[str, Any], wanted: Callable[[str], bool]) -> Iterator[AnswerEntry]:
    """Every served value of ``body`` (a native ``/v1/features`` response) whose entity id is
    ``wanted`` (asked once per id, before any entry of it is built)."""
    common = _Common(str(body["request_id"]), str(body["region"]), int(body["as_of_ms"]))
    if "views" in body:
        yield from _columns(body, common, wanted)
        return
    for row in body.get("results", ()):
        if not wanted(row["id"]):
            continue
        watermarks: dict[str, int] = {}
        for ref, served in row["features"].items():
            _newest(watermarks, ref.partition(":")[0], served["event_time_ms"])
        for ref, served in row["features"].items():
            view, _, feature = ref.partition(":")
            yield AnswerEntry(
                request_id=common.request_id,
                region=common.region,
                as_of_ms=common.as_of_ms,
                store=str(served["store"]),
                entity=row["entity"],
                entity_id=row["id"],
                view=view,
                feature=feature,
                value=served["value"],
                status=served["status"],
                event_time_ms=served["event_time_ms"],
                watermark_ms=watermarks.get(view),
            )


def _columns(
    body: Mapping[str, Any], common: _Common, wanted: Callable[[str], bool]
) -> Iterator[AnswerEntry]:
    store = str(body["store"])
    for block in body["views"]:
        refs = [ref.partition(":") for ref in block["features"]]
        for n, entity_id in enumerate(block["ids"]):
            if not wanted(entity_id):
                continue
            values, statuses = block["values"][n], block["statuses"][n]
            times = block["event_time_ms"][n]
            watermark = max((t for t in times if t is not None), default=None)
            for k, (view, _, feature) in enumerate(refs):
                yield AnswerEntry(
                    request_id=common.request_id,
                    region=common.region,
                    as_of_ms=common.as_of_ms,
                    store=store,
                    entity=block["entity"],
                    entity_id=entity_id,
                    view=view,
                    feature=feature,
                    value=values[k],
                    status=statuses[k],
                    event_time_ms=times[k],
                    watermark_ms=watermark,
                )


def _newest(watermarks: dict[str, int], view: str, event_time: int | None) -> None:
    if event_time is not None and event_time > watermarks.get(view, event_time - 1):
        watermarks[view] = event_time
