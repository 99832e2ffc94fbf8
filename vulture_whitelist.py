"""Names the dead-code pass must not report, each with the reason it is used after all.

vulture sees only static references, and matches by name, not by owner. Run the pass with:

    .venv/bin/vulture features regions cluster actors serve_apps training chaos benchmarks \
        vulture_whitelist.py --min-confidence 60

(``tests/unit/test_dead_code.py`` runs it). This file is read by vulture, never imported.
"""

# ruff: noqa: B018
from types import SimpleNamespace

_ = SimpleNamespace()

# --- Called by a framework, not by our code -----------------------------------------------------
# pydantic reads a model's config and runs its decorated validators.
_.model_config
_._check  # @model_validator of the catalog models and serve_apps.config
_._only_malformed  # @field_validator, cluster/events/synth.py
_._serving_needs_ray  # @model_validator, cluster/settings.py
_._ports_unique  # @model_validator, cluster/settings.py
_._a_front_door_per_region  # @model_validator, cluster/settings.py
_._ingress_range  # @model_validator, cluster/settings.py
_._node_ports_exist  # @model_validator, cluster/settings.py
_._dns_safe  # @field_validator, regions/config.py
_._unique  # @model_validator, regions/config.py
_._a_partition_per_shard  # @model_validator, actors/config.py
_._shard_in_range  # @model_validator, actors/offline.py
_._ordered_intervals  # @model_validator, actors/config.py
# Ray Serve calls a deployment's check_health on its health-check period.
_.check_health
# The replica holds its background tasks: asyncio keeps only a weak reference to a running task.
_._gauges  # serve_apps/app.py
# The context-manager protocol passes the traceback whether or not __exit__ uses it.
_.tb

# --- Read through serialisation, not by attribute name ------------------------------------------
# Catalog fields are walked with getattr over the section names.
_.sources
# GeneratorReport is written as a JSON line by model_dump().
_.counts_by_kind
_.target_rate_per_s
_.events_per_s
# CusumState.from_dict requires exactly the stored key set: dropping a field would turn every
# stored detector state into CorruptState.
_.alarms

# --- Interfaces: their members are called on the real object ------------------------------------
# regions/dynamodb_store.py DynamoClient: the Protocol of the boto3 client methods the module calls.
_.batch_write_item
_.batch_get_item
_.query
_.get_item
_.put_item
_.update_item
# actors/iceberg_tx.py MemoTransaction: overrides pyiceberg's Transaction.table_metadata, which
# pyiceberg's own append, commit and expiry code reads.
_.table_metadata

# --- Public API whose callers are operators, drills or test oracles -----------------------------
# Ledger and synthetic events: whether a correct consumer accepts the event (the oracles count
# what the pipeline must have applied).
_.ingestible
# The generator's closed-form share of the top users, the oracle of its skew test.
_.user_top_share
# A deterministic backoff for callers that must not sleep randomly (tests, replays).
_.no_jitter
# The Serve config file users deploy with `serve deploy` (docs/serving.md).
_.write_serve_config
# chaos/proxy.py: the reset fault (drills choose among the proxy's faults) and its counter.
_.reset
# regions/tiles.py: the tag byte the Redis script writes for a version floor; readers and tests
# recognise floors by it.
_.TAG_FLOOR
# training/: the Dataset-returning API users chain their own Ray Data steps on (docs/training.md),
# and the row-by-row reference the vectorised as-of path is proven equal to.
_.training_dataset
_.reference_values

# --- Dead, in files this change does not own: delete the code and its line here together ------
_.ignored  # regions/redis_store.py ApplyResult: returned, read by nothing
_.get_fields  # regions/*_store.py readers: only integration tests call it; serving uses get_all
