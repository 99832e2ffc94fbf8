"""``freshline demo``: the whole platform on the local stack, live in the terminal.

1. ``stack up`` (Kafka, Redis and DynamoDB per region, Iceberg, Ray head);
2. ``pipeline up`` (the stream pipeline as a Ray job);
3. the event generator streams card transactions (a few out of order, late or malformed);
4. item embeddings stream to the ``items`` view; each region's index actor answers similar
   items for a few of them, plain and filtered by price;
5. a live view shows the event flow and, for the busiest users, the features served from each
   region's store, merged from tiles by the same ``features/`` code the serving path uses.
Ctrl-C stops the generator and the view; the stack and the pipeline keep running.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from cluster.cli_views import status_table
from cluster.embeddings_demo import show_similar_items
from cluster.flow import EventFlowTail, FlowSnapshot
from cluster.settings import DEFAULT_EVENTS_TOPIC, StackSettings
from cluster.stack import Stack

DEMO_FEATURES = (
    "tx_count_5m",
    "tx_count_1h",
    "spend_sum_1h",
    "spend_max_1h",
    "distinct_merchants_24h",
    "last_amount",
    "amount_cusum",
)


def run_demo(
    settings: StackSettings, console: Console, *, rate: float, duration_s: float | None, live: bool
) -> int:
    from cluster import pipeline

    stack = Stack.build(settings)
    with console.status("starting the local stack (the first run resolves Kafka's jars)") as spin:
        stack.up(lambda s: spin.update(f"{s.name}: {'ready' if s.healthy else 'down'}"))
    console.print(status_table(stack.status()))
    with console.status("starting the pipeline: consumer and sink actors on Ray"):
        pipeline.up(settings)
    with console.status("streaming item embeddings; asking each region for similar items"):
        show_similar_items(settings, console)
    served = ServedFeatures(stack)
    tail = EventFlowTail(settings.kafka.bootstrap, DEFAULT_EVENTS_TOPIC).start()
    generator = _GeneratorThread(settings, rate, duration_s)
    time.sleep(1.0)  # let the tail reach the topic's end before the first event is produced
    generator.start()
    try:
        _show(console, tail, served, generator, live)
    except KeyboardInterrupt:
        console.print("stopping the generator ...")
    finally:
        generator.stop()
        tail.stop()
    if generator.report is not None:
        console.print(f"produced: {generator.report.to_json_line()}")
    if generator.error is not None:
        console.print(f"[red]generator failed:[/] {generator.error}")
    console.print(
        "the stack and pipeline keep running: `freshline pipeline status`, `freshline stack down`"
    )
    return 0 if generator.error is None else 1


class ServedFeatures:
    """Reads ``user_spend`` for a few users from every region's Redis (read-only user)."""

    def __init__(self, stack: Stack) -> None:
        from features.blocks import BlockLayout
        from features.demo import card_transactions_catalog
        from regions.redis_store import RedisRole, RedisTileReader, redis_client

        self._view = card_transactions_catalog().view("user_spend")
        self._tenant = stack.settings.tenant
        self._layout = BlockLayout.for_view(self._view)
        self._readers = {
            region.name: RedisTileReader(
                redis_client(region, RedisRole.READER, stack.settings.redis, stack.secrets),
                f"redis-{region.name}",
            )
            for region in stack.settings.topology
        }

    def read(self, users: list[str], now_ms: int) -> dict[str, dict[str, dict[str, Any]]]:
        """region -> user -> feature -> value; a region that does not answer is left out."""
        from features.block_merge import merge_blocks
        from features.blocks import blocks_of
        from features.errors import TransportError
        from features.keys import OnlineKey

        keys = {
            OnlineKey(self._tenant, self._view.name, self._view.version, u).encode(): u
            for u in users
        }
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for region, reader in self._readers.items():
            try:
                fields = reader.get_all(list(keys))
            except TransportError:
                continue
            stored = list(fields.items())
            blocks = [blocks_of(self._layout, f) for _, f in stored]
            merged = merge_blocks(self._layout, blocks, now_ms)
            out[region] = {keys[k]: merged.entity(i) for i, (k, _) in enumerate(stored)}
        return out


def _show(
    console: Console,
    tail: EventFlowTail,
    served: ServedFeatures,
    generator: _GeneratorThread,
    live: bool,
) -> None:
    if not live:
        while generator.is_alive():
            time.sleep(5)
            snap = tail.snapshot()
            console.print(
                f"produced {generator.produced}, consumed {snap.consumed} "
                f"({snap.consumed_per_s:.0f}/s), unparseable {snap.unparseable}"
            )
        return
    with Live(console=console, refresh_per_second=2) as view:
        while generator.is_alive():
            view.update(_render(tail.snapshot(), served, generator))
            time.sleep(0.5)
        view.update(_render(tail.snapshot(), served, generator))


def _render(snap: FlowSnapshot, served: ServedFeatures, generator: _GeneratorThread) -> Group:
    now_ms = int(datetime.now(tz=UTC).timestamp() * 1000)
    flow = Table.grid(padding=(0, 2))
    flow.add_row("produced", f"{generator.produced}", "consumed", f"{snap.consumed}")
    flow.add_row("rate", f"{snap.consumed_per_s:,.0f}/s", "unparseable", f"{snap.unparseable}")
    parts = " ".join(f"p{p}:{n}" for p, n in sorted(snap.per_partition.items()))
    flow.add_row("partitions", parts or "-", "", "")
    users = [user for user, _ in snap.top_entities]
    values = served.read(users, now_ms)
    home = values.get("us-east", {})
    other = values.get("eu-west", {})
    table = Table(title="busiest users: features served from us-east (and eu-west's tx_count_1h)")
    table.add_column("user")
    for name in (*DEMO_FEATURES, "eu-west 1h", "newest event age"):
        table.add_column(name, justify="right")
    for user, entity in snap.top_entities:
        row = home.get(user, {})
        cells = [_cell(row.get(name)) for name in DEMO_FEATURES]
        age = (now_ms - entity.last_event_time_ms) / 1000
        table.add_row(user, *cells, _cell(other.get(user, {}).get("tx_count_1h")), f"{age:.1f}s")
    return Group(Panel(flow, title="event flow"), table)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


class _GeneratorThread(threading.Thread):
    """Runs the demo event generator; records its report or its error for the summary."""

    def __init__(self, settings: StackSettings, rate: float, duration_s: float | None) -> None:
        super().__init__(name="demo-generator", daemon=True)
        self._settings, self._rate, self._duration_s = settings, rate, duration_s
        self._stop_flag = threading.Event()
        self.produced = 0
        self.report: Any = None
        self.error: BaseException | None = None

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(timeout=30)

    def stop_requested(self) -> bool:
        return self._stop_flag.is_set()

    def run(self) -> None:
        try:
            self.report = _produce(self._settings, self._rate, self._duration_s, self)
        except Exception as exc:  # reported in the summary, never swallowed
            self.error = exc


def _produce(
    settings: StackSettings, rate: float, duration_s: float | None, thread: _GeneratorThread
) -> Any:
    from cluster.events import GeneratorConfig, run_generator

    config = GeneratorConfig(
        run_id=f"demo_{int(time.time())}",
        seed=int(time.time()),
        n_users=20_000,
        n_merchants=500,
        rate_per_s=rate,
        duration_s=duration_s or 24 * 3600.0,
        out_of_order_share=0.05,
        late_share=0.002,
        malformed_share=0.005,
    )
    ledger = settings.state_dir / "demo" / f"{config.run_id}.jsonl"
    ledger.parent.mkdir(parents=True, exist_ok=True)

    def progress(p: Any) -> None:
        thread.produced = p.acked

    return run_generator(
        config,
        settings.kafka.bootstrap,
        DEFAULT_EVENTS_TOPIC,
        ledger,
        progress,
        should_stop=thread.stop_requested,
    )
