from __future__ import annotations

import pytest

from features.demo import card_transactions_catalog
from features.exceptions import CorruptState
from features.tile_groups import parse_field, tile_groups


def test_every_group_field_parses_back_to_its_tile_size_partition_and_start() -> None:
    """Readers and the changelog restore find a tile's group, partition and start from the field
    name alone, so every field a writer can produce must parse back to exactly those parts."""
    view = card_transactions_catalog().view("user_spend")
    groups = tile_groups(view)
    assert [g.tile_ms for g in groups][-1] is None, "the unwindowed group comes last"
    for group in groups:
        for partition in (0, 7, 123):
            starts = [None] if group.tile_ms is None else [0, -group.tile_ms, 1_700_000_040_000]
            for start in starts:
                assert parse_field(group.field(partition, start)) == (
                    group.tile_ms,
                    partition,
                    start,
                )


@pytest.mark.parametrize(
    "field", ["", "t60000_p1", "u_p1@0", "t60000_p@0", "t60000_p1@12a", "x_p1", "t_p1@0", "~p1"]
)
def test_fields_no_writer_produces_are_corrupt(field: str) -> None:
    with pytest.raises(CorruptState):
        parse_field(field)
