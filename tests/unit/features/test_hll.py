from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from features.exceptions import CorruptState, IncompatibleStates
from features.hll import HyperLogLog, registers_of, stable_hash64


def _sketch(values: range, p: int = 14, prefix: str = "v") -> HyperLogLog:
    sketch = HyperLogLog(p)
    for i in values:
        sketch.add(f"{prefix}-{i}")
    return sketch


def test_hash_is_pinned() -> None:
    # Pinned on purpose: changing the hash would silently corrupt every stored sketch, and
    # Python's salted hash() would give a different value in every process.
    assert stable_hash64("") == 0xE4A6A0577479B2B4
    digest = hashlib.blake2b(b"u_000123", digest_size=8).digest()
    assert stable_hash64("u_000123") == int.from_bytes(digest, "big")


@pytest.mark.parametrize("n", [10, 1_000, 100_000])
def test_relative_error_within_three_standard_errors(n: int) -> None:
    p = 14
    sketch = _sketch(range(n), p)
    bound = 3 * 1.04 / math.sqrt(2**p)
    assert abs(sketch.estimate() - n) / n <= bound


def test_small_cardinalities_are_near_exact() -> None:
    assert HyperLogLog().estimate() == 0.0
    assert _sketch(range(1)).cardinality() == 1
    assert _sketch(range(10)).cardinality() == 10


def test_duplicates_do_not_count() -> None:
    sketch = _sketch(range(500))
    before = sketch.to_bytes()
    for i in range(500):
        sketch.add(f"v-{i}")
    assert sketch.to_bytes() == before


@pytest.mark.parametrize(("p", "n_a", "n_b"), [(14, 300, 400), (14, 5_000, 20_000), (8, 50, 3_000)])
def test_merge_estimate_equals_estimate_of_the_union(p: int, n_a: int, n_b: int) -> None:
    # Overlapping ranges: a = [0, n_a), b = [n_a // 2, n_a // 2 + n_b).
    a = _sketch(range(n_a), p)
    b = _sketch(range(n_a // 2, n_a // 2 + n_b), p)
    union = _sketch(range(max(n_a, n_a // 2 + n_b)), p)
    merged = a.merge(b)
    assert merged == union
    assert merged.estimate() == union.estimate()
    assert b.merge(a) == merged, "commutative"
    assert merged.merge(a) == merged, "idempotent"


def test_sparse_converts_to_dense_without_changing_the_estimate() -> None:
    p = 10
    sketch = HyperLogLog(p)
    estimates = []
    for i in range(200):
        was_sparse = sketch.is_sparse
        sketch.add(f"x{i}")
        estimates.append(sketch.estimate())
        if was_sparse and not sketch.is_sparse:
            # The same registers rebuilt sparse-free give the same estimate.
            dense = HyperLogLog.from_bytes(sketch.to_bytes())
            assert dense.estimate() == estimates[-1]
    assert not sketch.is_sparse
    assert len(HyperLogLog(p).to_bytes()) < 16


def test_mixed_sparse_dense_merge() -> None:
    small = _sketch(range(10), 12, "s")
    big = _sketch(range(5_000), 12, "b")
    assert small.is_sparse and not big.is_sparse
    expected = np.maximum(small.registers(), big.registers())
    assert np.array_equal(small.merge(big).registers(), expected)
    assert np.array_equal(big.merge(small).registers(), expected)
    assert small.is_sparse, "merge does not mutate its inputs"


@pytest.mark.parametrize("n", [0, 3, 200, 20_000])
def test_bytes_round_trip(n: int) -> None:
    sketch = _sketch(range(n), 12)
    data = sketch.to_bytes()
    back = HyperLogLog.from_bytes(data)
    assert back == sketch
    assert back.to_bytes() == data
    assert back.estimate() == sketch.estimate()


def test_sparse_encoding_is_compact() -> None:
    assert len(_sketch(range(20), 14).to_bytes()) <= 8 + 3 * 20
    assert len(_sketch(range(5_000), 14).to_bytes()) == 4 + 2**14


def test_different_precisions_do_not_merge() -> None:
    with pytest.raises(IncompatibleStates):
        HyperLogLog(10).merge(HyperLogLog(12))
    with pytest.raises(IncompatibleStates):
        HyperLogLog(3)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"X\x01\x0e\x00\x00\x00\x00\x00",  # bad magic
        b"H\x02\x0e\x00\x00\x00\x00\x00",  # bad version
        b"H\x01\x11\x00\x00\x00\x00\x00",  # p = 17
        b"H\x01\x0e\x00\x00\x00\x00\x02\x00\x01\x01",  # count 2, one pair
        b"H\x01\x0e\x00\x00\x00\x00\x02\x00\x05\x01\x00\x05\x02",  # duplicate index
        b"H\x01\x0e\x00\x00\x00\x00\x01\x00\x05\x00",  # rank 0
        b"H\x01\x0e\x00\x00\x00\x00\x01\x00\x05\x40",  # rank 64 > 51
        b"H\x01\x04\x00\x00\x00\x00\x01\x00\x10\x01",  # index 16 >= m
        b"H\x01\x04\x01" + bytes(15),  # dense body too short
        b"H\x01\x04\x01" + bytes(15) + b"\x62",  # dense rank 98
        b"H\x01\x04\x07",  # unknown kind
    ],
)
def test_corrupt_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(CorruptState):
        HyperLogLog.from_bytes(data)


@pytest.mark.parametrize("p", [4, 10, 14, 16])
def test_registers_of_many_hashes_are_add_hash_s_and_add_registers_builds_the_same_sketch(
    p: int,
) -> None:
    rng = np.random.default_rng(p)
    hashes = [0, 1, 2**64 - 1, 2 ** (64 - p) - 1, 2 ** (64 - p), 2**63]
    hashes += [int(h) for h in rng.integers(0, 2**63, 300)]
    hashes += [h >> int(rng.integers(0, 64)) for h in hashes]  # ranks up to 64 - p + 1
    one_by_one, at_once = HyperLogLog(p), HyperLogLog(p)
    for hashed in hashes:
        one_by_one.add_hash(hashed)
    index, rank = registers_of(np.array(hashes, dtype=np.uint64), p)
    for i, hashed in enumerate(hashes):
        single = HyperLogLog(p)
        single.add_hash(hashed)
        assert single.registers()[index[i]] == rank[i]
    at_once.add_registers(index[::-1].tolist(), rank[::-1].tolist())  # any order
    assert at_once.to_bytes() == one_by_one.to_bytes()
    assert at_once.is_sparse == one_by_one.is_sparse
    dense = _sketch(range(5_000), p)
    again = dense.copy()
    for hashed in hashes:
        dense.add_hash(hashed)
    again.add_registers(index.tolist(), rank.tolist())
    assert again.to_bytes() == dense.to_bytes()


def test_the_sparse_encoding_is_the_documented_one() -> None:
    """``H`` | version 1 | p | kind 0 | uint32 count | (uint16 index, uint8 rank) ascending."""
    sketch = HyperLogLog(10)
    sketch.add_registers([3, 1], [2, 5])
    assert sketch.to_bytes() == b"H\x01\x0a\x00" + b"\x00\x00\x00\x02" + b"\x00\x01\x05\x00\x03\x02"
    assert HyperLogLog(16).to_bytes() == b"H\x01\x10\x00\x00\x00\x00\x00"
