"""Each logged answer carries its served watermark: the newest event time the answer showed for
that entity and view (what the validator recomputes "as of the store" from), in both shapes."""

from __future__ import annotations

from serve_apps.answer_entries import answer_entries


def _value(value: float, event_time: int | None) -> dict[str, object]:
    status = "present" if event_time is not None else "not_found"
    return {"value": value, "status": status, "event_time_ms": event_time, "age_ms": 0,
            "store": "redis-us-east"}  # fmt: skip


ENVELOPE = {"request_id": "r", "region": "us-east", "as_of_ms": 1_000, "store": "redis-us-east"}


def test_the_watermark_is_the_newest_event_time_of_the_entity_s_view_in_rows() -> None:
    body = {
        **ENVELOPE,
        "results": [
            {"entity": "user", "id": "u_1", "features": {
                "user_spend:tx_count_1h": _value(2, 600),
                "user_spend:last_amount": _value(5.0, 900),
                "other_view:tx": _value(1, 100),
            }},
            {"entity": "user", "id": "u_2",
             "features": {"user_spend:tx_count_1h": _value(0, None)}},
        ],
    }  # fmt: skip
    got = {(e.entity_id, e.ref): e.watermark_ms for e in answer_entries(body, lambda _: True)}
    assert got == {
        ("u_1", "user_spend:tx_count_1h"): 900,
        ("u_1", "user_spend:last_amount"): 900,
        ("u_1", "other_view:tx"): 100,
        ("u_2", "user_spend:tx_count_1h"): None,
    }


def test_the_watermark_in_columns_is_the_newest_of_the_row() -> None:
    body = {
        **ENVELOPE,
        "format": "columns",
        "views": [{
            "view": "user_spend", "entity": "user",
            "features": ["user_spend:tx_count_1h", "user_spend:last_amount"],
            "ids": ["u_1", "u_2"], "values": [[2, 5.0], [0, None]],
            "statuses": [["present", "present"], ["not_found", "not_found"]],
            "event_time_ms": [[600, 900], [None, None]], "age_ms": [[0, 0], [None, None]],
        }],
    }  # fmt: skip
    got = {(e.entity_id, e.feature): e.watermark_ms for e in answer_entries(body, lambda _: True)}
    assert got == {("u_1", "tx_count_1h"): 900, ("u_1", "last_amount"): 900,
                   ("u_2", "tx_count_1h"): None, ("u_2", "last_amount"): None}  # fmt: skip
