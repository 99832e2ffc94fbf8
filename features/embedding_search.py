"""Embedding search, pure: columnar metadata, filters, the strategy choice, rank fusion.

Filters (:func:`compile_filter`) are parsed from JSON against an
:class:`~features.embeddings.EmbeddingView`'s attributes and evaluate over columnar metadata
(:class:`AttributeColumns`) in one vectorised pass per clause. :func:`choose_strategy` turns the
share of rows that pass into the way the index searches; :func:`reciprocal_rank_fusion` fuses a
vector ranking with a keyword ranking (:func:`keyword_ranking`) for hybrid search.
:class:`Query`, :class:`Neighbours` and :class:`SearchAnswer` are what the serving app and the
index actors exchange.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from features.embeddings import EmbeddingEvent, EmbeddingView
from features.errors import DataError

# --- Columnar metadata ---------------------------------------------------------------


class AttributeColumns:
    """The metadata of an index's rows, one array per attribute, aligned with the row numbers:
    categories as dictionary codes (-1: absent), numbers as float64 (NaN: absent), tokens as
    postings (token -> rows). A filter reads whole columns, never one Python object per row."""

    def __init__(self, categories: Iterable[str], numbers: Iterable[str]) -> None:
        self.codes: dict[str, NDArray[np.int32]] = {c: _empty(np.int32, -1) for c in categories}
        self.dictionaries: dict[str, dict[str, int]] = {c: {} for c in self.codes}
        self.numbers: dict[str, NDArray[np.float64]] = {
            n: _empty(np.float64, np.nan) for n in numbers
        }
        self.postings: dict[str, set[int]] = {}
        self.row_tokens: dict[int, tuple[str, ...]] = {}

    def set_row(self, row: int, event: EmbeddingEvent) -> None:
        """Replaces everything row ``row`` held with the attributes of ``event``."""
        self.clear_row(row)
        for name, value in event.categories.items():
            codes = self._grown(self.codes, name, row, -1)
            codes[row] = self.dictionaries[name].setdefault(value, len(self.dictionaries[name]))
        for name, number in event.numbers.items():
            self._grown(self.numbers, name, row, np.nan)[row] = number
        tokens = tuple(dict.fromkeys(normalise_tokens(event.tokens)))
        if tokens:
            self.row_tokens[row] = tokens
            for token in tokens:
                self.postings.setdefault(token, set()).add(row)

    def clear_row(self, row: int) -> None:
        for codes in self.codes.values():
            if row < len(codes):
                codes[row] = -1
        for numbers in self.numbers.values():
            if row < len(numbers):
                numbers[row] = np.nan
        for token in self.row_tokens.pop(row, ()):
            self.postings[token].discard(row)

    def compacted(self, keep: NDArray[np.intp]) -> AttributeColumns:
        """The columns of rows ``keep`` only: new row ``i`` holds what row ``keep[i]`` held."""
        out = AttributeColumns(self.codes, self.numbers)
        out.dictionaries = {name: dict(d) for name, d in self.dictionaries.items()}
        out.codes = {name: _column(self.codes, name, _end(keep), -1)[keep] for name in self.codes}
        out.numbers = {
            name: _column(self.numbers, name, _end(keep), np.nan)[keep] for name in self.numbers
        }
        new_row = {int(old): new for new, old in enumerate(keep)}
        for old, tokens in self.row_tokens.items():
            if old in new_row:
                out.row_tokens[new_row[old]] = tokens
                for token in tokens:
                    out.postings.setdefault(token, set()).add(new_row[old])
        return out

    @staticmethod
    def _grown(columns: dict[str, Any], name: str, row: int, fill: float) -> Any:
        column = columns[name]
        if row >= len(column):
            grown = np.full(max(2 * len(column), row + 1, 64), fill, dtype=column.dtype)
            grown[: len(column)] = column
            columns[name] = column = grown
        return column


def _empty(dtype: type[Any], fill: float) -> Any:
    return np.full(0, fill, dtype=dtype)


def _end(keep: NDArray[np.intp]) -> int:
    return int(keep.max()) + 1 if len(keep) else 0


def normalise_tokens(tokens: Iterable[str]) -> list[str]:
    """Lower-cased tokens split on anything but letters and digits: events and queries alike."""
    out: list[str] = []
    for token in tokens:
        word = "".join(c if c.isalnum() else " " for c in token.lower())
        out.extend(word.split())
    return out


_RANGE_OPS = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}


class FilterError(DataError):
    """A filter that names an undeclared attribute, an unknown operator or a wrong value type."""


@dataclass(frozen=True, slots=True)
class Clause:
    """One attribute test: ``op`` is ``in`` (equality is a one-value set) or a range operator."""

    field: str
    op: str
    values: tuple[str | float, ...]


@dataclass(frozen=True, slots=True)
class MetadataFilter:
    """The conjunction of its clauses; an absent attribute never matches a clause."""

    clauses: tuple[Clause, ...]

    @property
    def key(self) -> str:
        """Equal for equal filters: queries with the same key can share one index call."""
        return orjson.dumps([[c.field, c.op, list(c.values)] for c in self.clauses]).decode()

    def mask(self, columns: AttributeColumns, rows: int) -> NDArray[np.bool_]:
        """Which of rows ``0..rows-1`` pass, in one vectorised pass per clause."""
        out = np.ones(rows, dtype=bool)
        for clause in self.clauses:
            out &= _clause_mask(clause, columns, rows)
        return out


def _column(columns: dict[str, Any], name: str, rows: int, fill: float) -> Any:
    column = columns[name][:rows]
    if len(column) < rows:
        column = np.concatenate([column, np.full(rows - len(column), fill, column.dtype)])
    return column


def _clause_mask(clause: Clause, columns: AttributeColumns, rows: int) -> NDArray[np.bool_]:
    if clause.field in columns.codes:
        dictionary = columns.dictionaries[clause.field]
        wanted = [dictionary[v] for v in clause.values if isinstance(v, str) and v in dictionary]
        return np.isin(_column(columns.codes, clause.field, rows, -1), wanted)
    numbers = _column(columns.numbers, clause.field, rows, np.nan)
    if clause.op == "in":
        return np.isin(numbers, np.asarray(clause.values, dtype=np.float64))
    with np.errstate(invalid="ignore"):  # NaN (absent) compares False, which is the intent
        return np.asarray(_RANGE_OPS[clause.op](numbers, clause.values[0]), dtype=bool)


def compile_filter(spec: Mapping[str, Any], view: EmbeddingView) -> MetadataFilter:
    """``{"colour": "red", "size": {"in": ["s", "m"]}, "price": {"gte": 5, "lt": 20}}``:
    a scalar is equality, ``in`` a set, ``gt``/``gte``/``lt``/``lte`` ranges (numbers only)."""
    clauses: list[Clause] = []
    for name in sorted(spec):
        if name not in view.categories and name not in view.numbers:
            raise FilterError(f"filter on {name!r}: the view declares no such attribute")
        kind: type = str if name in view.categories else float
        tests = spec[name] if isinstance(spec[name], dict) else {"eq": spec[name]}
        if not tests:  # a test that tests nothing is a client's mistake, not "everything"
            raise FilterError(f"filter on {name!r}: give at least one operator")
        for op in sorted(tests):
            clauses.append(_clause(name, kind, op, tests[op]))
    return MetadataFilter(tuple(clauses))


def _clause(name: str, kind: type, op: str, value: Any) -> Clause:
    if op == "eq":
        return Clause(name, "in", (_operand(name, kind, value),))
    if op == "in":
        if not isinstance(value, list) or not value:
            raise FilterError(f"filter on {name!r}: 'in' needs a non-empty list")
        return Clause(name, "in", tuple(sorted({_operand(name, kind, v) for v in value})))
    if op in _RANGE_OPS and kind is float:
        return Clause(name, op, (_operand(name, kind, value),))
    raise FilterError(f"filter on {name!r}: unknown operator {op!r} for this attribute")


def _operand(name: str, kind: type, value: Any) -> str | float:
    if kind is str and type(value) is str:
        return value
    if kind is float and type(value) in (int, float) and math.isfinite(value):
        return float(value)
    raise FilterError(f"filter on {name!r}: expected a {'string' if kind is str else 'number'}")


# --- Strategy and fusion -------------------------------------------------------------------------


class Strategy(StrEnum):
    """How a search met its filter; answers report it."""

    UNFILTERED = "unfiltered"  # the approximate index, no filter
    EXACT = "exact"  # brute force over the rows that pass: exact, cheap when few pass
    ID_SELECTOR = "id_selector"  # the approximate index told which ids may be returned
    OVER_FETCH = "over_fetch"  # the approximate index asked for more, then filtered


@dataclass(frozen=True, slots=True)
class Query:
    """One search: ``vector`` of the view's dimension, an optional filter and keyword text."""

    vector: NDArray[np.float32]
    k: int
    filter: MetadataFilter | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class Neighbours:
    """Entity ids, best first, with their distance (L2), dot product (IP) or fused RRF score."""

    ids: tuple[str, ...]
    scores: tuple[float, ...]
    strategy: Strategy
    hybrid: bool = False


@dataclass(frozen=True, slots=True)
class SearchAnswer:
    """What an index actor answers: the version searched, its index version (the count of
    changes applied) and one :class:`Neighbours` per query, in query order."""

    model_version: str
    index_version: int
    results: list[Neighbours]
    # Which index answered, ``index-<region>``: a fallback answer names the other region.
    store: str = "index"


@dataclass(frozen=True, slots=True)
class StrategyPolicy:
    """When few rows pass, scanning them beats any index and is exact; when most pass, asking
    the index for ``k / selectivity * over_fetch_factor`` and filtering is cheapest; between the
    two, the index skips the ids the filter refuses."""

    exact_max_rows: int = 4096
    over_fetch_min_selectivity: float = 0.5
    over_fetch_factor: float = 2.0


def choose_strategy(passing: int, total: int, policy: StrategyPolicy) -> Strategy:
    """``passing`` of ``total`` live rows pass the filter (``total`` counts them all)."""
    if passing <= policy.exact_max_rows:
        return Strategy.EXACT
    if passing >= total * policy.over_fetch_min_selectivity:
        return Strategy.OVER_FETCH
    return Strategy.ID_SELECTOR


def widened(base: int, passing: int, total: int, cap: int) -> int:
    """A search breadth (IVF ``nprobe``, HNSW ``efSearch``) scaled by the inverse selectivity.

    When a share ``s`` of the rows passes a filter, a probe of ``base`` lists (or a beam of
    ``base``) meets about ``s`` times the passing candidates it would meet unfiltered; visiting
    ``base / s`` keeps that number, and so the recall, about the same. Never above ``cap``."""
    return max(1, min(cap, math.ceil(base * total / max(passing, 1))))


def over_fetch_k(k: int, passing: int, total: int, policy: StrategyPolicy) -> int:
    """How many neighbours to ask for so that about ``k`` of them pass the filter."""
    wanted = math.ceil(k * total / max(passing, 1) * policy.over_fetch_factor)
    return max(k, min(total, wanted))


RRF_C = 60
"""The rank constant of reciprocal rank fusion: it damps the weight of the very first ranks."""


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[int]], k: int, c: int = RRF_C
) -> list[tuple[int, float]]:
    """The ``k`` items with the highest ``sum(1 / (c + rank))`` over the rankings they appear in
    (ranks start at 1); ties go to the item seen first, so the result is deterministic."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (c + rank)
    order = sorted(scores.items(), key=lambda kv: -kv[1])  # stable: first seen wins ties
    return order[:k]


def keyword_ranking(
    columns: AttributeColumns, query: Iterable[str], allowed: NDArray[np.bool_]
) -> list[int]:
    """Rows holding any query token, most distinct tokens matched first, then by row number;
    only rows whose ``allowed`` entry is true."""
    counts: dict[int, int] = {}
    for token in dict.fromkeys(normalise_tokens(query)):
        for row in columns.postings.get(token, ()):
            if row < len(allowed) and allowed[row]:
                counts[row] = counts.get(row, 0) + 1
    return sorted(counts, key=lambda row: (-counts[row], row))
