"""Freshline's pure domain: catalog, tile math, aggregators, sketches, CUSUM, keys and codecs.

Nothing here does I/O or imports Kafka, Redis, boto3 or Ray. The public names below are loaded on
first use (PEP 562), so ``from features.errors import ...`` in the CLI does not pay for importing
numpy and pydantic; type checkers see ordinary imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS: dict[str, str] = {
    # catalog
    "Aggregation": "features.catalog",
    "Catalog": "features.catalog",
    "Entity": "features.catalog",
    "EventSource": "features.catalog",
    "Feature": "features.catalog",
    "FeatureService": "features.catalog",
    "FeatureView": "features.catalog",
    "FieldType": "features.catalog",
    # durations
    "format_duration": "features.durations",
    "parse_duration": "features.durations",
    "to_ms": "features.durations",
    # tiles
    "TileSpec": "features.tiles",
    "covering_tiles": "features.tiles",
    "in_window": "features.tiles",
    "tile_ms_for": "features.tiles",
    "tile_size_for": "features.tiles",
    "tile_start": "features.tiles",
    "window_start": "features.tiles",
    # aggregators
    "Aggregator": "features.aggregators",
    "aggregator_for": "features.aggregators",
    "merge_all": "features.aggregators",
    "window_value": "features.aggregators",
    # sketches and detectors
    "HyperLogLog": "features.hll",
    "CusumConfig": "features.cusum",
    "CusumLogic": "features.cusum",
    "CusumState": "features.cusum",
    # keys and codecs
    "OnlineKey": "features.keys",
    "decode_entity_id": "features.keys",
    "encode_entity_id": "features.keys",
    "online_key": "features.keys",
    "tile_field": "features.keys",
    "decode": "features.codec",
    "encode": "features.codec",
    # demo
    "card_transactions_catalog": "features.demo",
    # errors
    "CatalogError": "features.errors",
    "ConfigError": "features.errors",
    "DataError": "features.errors",
    "FreshlineError": "features.errors",
    "CorruptState": "features.exceptions",
    "IncompatibleStates": "features.exceptions",
    "InvalidEntityId": "features.exceptions",
    "NotMergeable": "features.exceptions",
    "UnencodableValue": "features.exceptions",
}

# Kept literal for linters and IDEs; tests check it equals the keys of _EXPORTS.
__all__ = [
    "Aggregation",
    "Aggregator",
    "Catalog",
    "CatalogError",
    "ConfigError",
    "CorruptState",
    "CusumConfig",
    "CusumLogic",
    "CusumState",
    "DataError",
    "Entity",
    "EventSource",
    "Feature",
    "FeatureService",
    "FeatureView",
    "FieldType",
    "FreshlineError",
    "HyperLogLog",
    "IncompatibleStates",
    "InvalidEntityId",
    "NotMergeable",
    "OnlineKey",
    "TileSpec",
    "UnencodableValue",
    "aggregator_for",
    "card_transactions_catalog",
    "covering_tiles",
    "decode",
    "decode_entity_id",
    "encode",
    "encode_entity_id",
    "format_duration",
    "in_window",
    "merge_all",
    "online_key",
    "parse_duration",
    "tile_field",
    "tile_ms_for",
    "tile_size_for",
    "tile_start",
    "to_ms",
    "window_start",
    "window_value",
]

if TYPE_CHECKING:
    from features.aggregators import Aggregator, aggregator_for, merge_all, window_value
    from features.catalog import (
        Aggregation,
        Catalog,
        Entity,
        EventSource,
        Feature,
        FeatureService,
        FeatureView,
        FieldType,
    )
    from features.codec import decode, encode
    from features.cusum import CusumConfig, CusumLogic, CusumState
    from features.demo import card_transactions_catalog
    from features.durations import format_duration, parse_duration, to_ms
    from features.errors import CatalogError, ConfigError, DataError, FreshlineError
    from features.exceptions import (
        CorruptState,
        IncompatibleStates,
        InvalidEntityId,
        NotMergeable,
        UnencodableValue,
    )
    from features.hll import HyperLogLog
    from features.keys import (
        OnlineKey,
        decode_entity_id,
        encode_entity_id,
        online_key,
        tile_field,
    )
    from features.tiles import (
        TileSpec,
        covering_tiles,
        in_window,
        tile_ms_for,
        tile_size_for,
        tile_start,
        window_start,
    )


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'features' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
