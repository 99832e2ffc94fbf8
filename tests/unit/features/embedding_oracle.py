"""The filter rules read straight from the JSON spec, one row at a time: the oracle the
vectorised filters of ``features.embedding_search`` are held to (shares no code with them)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_RANGES = {
    "gt": lambda a, b: a > b,
    "gte": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "lte": lambda a, b: a <= b,
}


def spec_matches(
    spec: Mapping[str, Any], categories: Mapping[str, str], numbers: Mapping[str, float]
) -> bool:
    """Every attribute test of ``spec`` holds; an attribute the row lacks fails its tests."""
    for name, test in spec.items():
        value: Any = categories.get(name, numbers.get(name))
        tests = test if isinstance(test, dict) else {"eq": test}
        for op, operand in tests.items():
            if value is None:
                return False
            if op == "eq" and value != operand:
                return False
            if op == "in" and value not in operand:
                return False
            if op in _RANGES and not _RANGES[op](value, operand):
                return False
    return True
