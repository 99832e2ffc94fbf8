"""Snapshots of an :class:`~actors.embedding_index.EmbeddingIndex` with the offsets it reflects.

Layout of a snapshot directory::

    CURRENT                 the name of the latest complete snapshot, replaced atomically
    snap-<sequence>/        index.faiss (faiss.write_index), arrays.npz (vectors, live rows,
                            attribute columns), state.json (ids, event times, offsets, ...)

Write protocol, in this order: (1) write every file of the new snapshot into a ``.tmp`` directory
and fsync it, (2) rename it to its final name, (3) write ``CURRENT.tmp`` naming it, fsync, and
``os.replace`` it over ``CURRENT``, (4) fsync the directory, (5) delete older snapshots. A crash
before (3) leaves ``CURRENT`` naming the previous complete snapshot; nothing ever reads a
half-written one. Offsets are the next offset to read per source partition: restoring the
snapshot and replaying from them reproduces the index (the index ignores events it has applied).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from actors.embedding_index import EmbeddingIndex
from features.embedding_search import AttributeColumns
from features.embeddings import EmbeddingView
from features.exceptions import CorruptState

FORMAT = 1
_CURRENT = "CURRENT"


def write_snapshot(index: EmbeddingIndex, directory: Path, offsets: Mapping[int, int]) -> Path:
    """Writes a complete snapshot and makes it the current one; returns its directory."""
    directory.mkdir(parents=True, exist_ok=True)
    name = f"snap-{_next_sequence(directory):012d}"
    tmp = directory / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    faiss.write_index(index.faiss_index, str(tmp / "index.faiss"))  # 1
    with (tmp / "arrays.npz").open("wb") as f:
        np.savez(f, **_arrays(index))
    (tmp / "state.json").write_text(json.dumps(_state(index, offsets)), encoding="utf-8")
    for path in tmp.iterdir():
        _fsync(path)
    final = directory / name
    tmp.rename(final)  # 2
    pointer = directory / f"{_CURRENT}.tmp"
    pointer.write_text(name, encoding="utf-8")
    _fsync(pointer)
    os.replace(pointer, directory / _CURRENT)  # 3
    _fsync(directory)  # 4
    for old in directory.glob("snap-*"):  # 5
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_snapshot(
    view: EmbeddingView, version: str, directory: Path
) -> tuple[EmbeddingIndex, dict[int, int]] | None:
    """The current snapshot's index and offsets, or ``None`` when there is none yet. Raises
    ``CorruptState`` when it belongs to another view, version or dimension, or does not parse."""
    pointer = directory / _CURRENT
    if not pointer.exists():
        return None
    path = directory / pointer.read_text(encoding="utf-8").strip()
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        with np.load(path / "arrays.npz") as npz:
            arrays = {key: npz[key] for key in npz.files}
        faiss_index = faiss.read_index(str(path / "index.faiss"))
    except (OSError, ValueError, RuntimeError) as exc:
        raise CorruptState(f"snapshot {path} does not load: {exc}") from exc
    _check_identity(state, view, version, path)
    index = _restored(view, version, state, arrays, faiss_index)
    return index, {int(p): int(o) for p, o in state["offsets"].items()}


def _arrays(index: EmbeddingIndex) -> dict[str, Any]:
    rows = index.rows
    out: dict[str, Any] = {"vectors": index.vectors[:rows], "live": index.live[:rows]}
    columns = index.columns
    for name, codes in columns.codes.items():
        out[f"code.{name}"] = codes
    for name, numbers in columns.numbers.items():
        out[f"number.{name}"] = numbers
    return out


def _state(index: EmbeddingIndex, offsets: Mapping[int, int]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "view": index.view.name,
        "version": index.version,
        "dimension": index.view.dimension,
        "kind": index.kind,
        "mutations": index.mutations,
        "row_ids": index.row_ids,
        "times": index.times,
        "free": index.free,
        "offsets": {str(p): o for p, o in offsets.items()},
        "dictionaries": index.columns.dictionaries,
        "row_tokens": {str(row): list(t) for row, t in index.columns.row_tokens.items()},
    }


def _check_identity(state: dict[str, Any], view: EmbeddingView, version: str, path: Path) -> None:
    found = (state.get("format"), state.get("view"), state.get("version"), state.get("dimension"))
    wanted = (FORMAT, view.name, version, view.dimension)
    if found != wanted:
        raise CorruptState(f"snapshot {path} is {found}, expected {wanted}")


def _restored(
    view: EmbeddingView,
    version: str,
    state: dict[str, Any],
    arrays: dict[str, Any],
    faiss_index: Any,
) -> EmbeddingIndex:
    index = EmbeddingIndex(view, version)
    index.vectors = arrays["vectors"].astype(np.float32)
    index.live = arrays["live"].astype(bool)
    index.row_ids = list(state["row_ids"])
    index.row_of = {e: row for row, e in enumerate(index.row_ids) if e and index.live[row]}
    index.times = {str(e): int(t) for e, t in state["times"].items()}
    index.free = [int(r) for r in state["free"]]
    index.mutations = int(state["mutations"])
    index.kind = str(state["kind"])
    index.faiss_index = faiss_index
    index.columns = _columns(view, state, arrays)
    # HNSW keeps its tombstones in the graph; the other kinds hold exactly the live rows.
    expected = index.rows if index.kind == "hnsw" else index.size
    if faiss_index.ntotal != expected:
        raise CorruptState(f"index holds {faiss_index.ntotal} vectors, the rows {expected}")
    return index


def _columns(
    view: EmbeddingView, state: dict[str, Any], arrays: dict[str, Any]
) -> AttributeColumns:
    columns = AttributeColumns(view.categories, view.numbers)
    columns.dictionaries = {k: dict(v) for k, v in state["dictionaries"].items()}
    for name in view.categories:
        columns.codes[name] = arrays[f"code.{name}"].astype(np.int32)
    for name in view.numbers:
        columns.numbers[name] = arrays[f"number.{name}"].astype(np.float64)
    for row, tokens in state["row_tokens"].items():
        columns.row_tokens[int(row)] = tuple(tokens)
        for token in tokens:
            columns.postings.setdefault(token, set()).add(int(row))
    return columns


def _next_sequence(directory: Path) -> int:
    taken = [p.name.split("-")[1].removesuffix(".tmp") for p in directory.glob("snap-*")]
    return max((int(t) for t in taken if t.isdigit()), default=0) + 1


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
