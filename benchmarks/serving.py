"""Serving latency and capacity over HTTP, with the floor (a bare Starlette app) in the same run.

    .venv/bin/python benchmarks/serving.py --quick      # under two minutes
    .venv/bin/python benchmarks/serving.py              # longer runs per step

It starts its own Redis, DynamoDB and Ray head on free ports (Kafka is not needed), writes tiles of
a 50-feature benchmark view for 200 users through the partition processor and the Redis tile
writer, deploys both regions' Serve applications with ``serve_apps.deploy.deploy``, then:

1. open loop, one entity x 50 features at 500 req/s -> ``single_p50_ms``, ``single_p99_ms``;
2. open loop at 100, 250, 500, 750, 1000, ... req/s until p99 > 20 ms -> ``single_max_rps``
   (the highest rate that held; 0 when even 100 req/s did not);
3. closed loop, 16 connections -> ``single_closed_rps`` (capacity);
4. open loop, 100 entities x 50 features at 10 and 25 req/s (``batch100_10rps``,
   ``batch100_25rps``), then at 50 req/s -> ``batch100_p50_ms``, ``batch100_p99_ms``; the same
   read in the columnar response shape (``"format": "columns"``) at 50 req/s and closed loop ->
   ``batch100_columns_p99_ms``, ``batch100_columns_closed_rps``;
5. the floor: a Starlette app on uvicorn returning a constant, closed loop, 16 connections ->
   ``floor_rps``; ``ratio_to_floor = single_closed_rps / floor_rps``.

Every step's summary counts which store answered (``stores``); ``single_local_share`` and
``batch100_local_share`` are the fractions the local Redis served, so a latency measured on
answers that fell back to another store or to defaults is visible as such.

The last line printed is one JSON object with every figure, also appended to
`benchmarks/results/serving.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson
from loadgen import Result, closed_loop, open_loop, request_bytes

from actors.processor import PartitionProcessor, RawRecord
from cluster.isolated import isolated_settings
from cluster.process import free_port
from cluster.results import current_command, record_run
from cluster.settings import IngressMode, StackSettings
from cluster.stack import Stack
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from regions.aws import LOCAL_CREDENTIALS
from regions.redis_store import RedisRole, RedisTileWriter, redis_client
from serve_apps.config import ApiKey, Limits, new_api_key
from serve_apps.deploy import DEFAULT_INGRESS, INGRESS_MODES, configs_for_stack, deploy

WINDOWS = ("5m", "10m", "30m", "1h", "2h", "6h", "12h", "24h", "3d", "7d")
AGGS = ("count", "sum", "mean", "max", "min")
USERS = 200
PARTITIONS = 8
API_KEY = new_api_key()
FLOOR_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
async def const(request):
    await request.body()
    return Response(b'{"ok":true}', media_type="application/json")
app = Starlette(routes=[Route("/", const, methods=["GET", "POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""


def benchmark_catalog() -> Catalog:
    """The demo source with one 50-feature view ``bench_user`` (10 windows x 5 aggregations)."""
    demo = card_transactions_catalog().model_dump(mode="json")
    features = []
    for window in WINDOWS:
        for agg in AGGS:
            feature: dict[str, Any] = {
                "name": f"{agg}_{window}",
                "aggregation": agg,
                "window": window,
            }
            if agg != "count":
                feature["column"] = "amount"
            features.append(feature)
    view = {
        "name": "bench_user",
        "version": 1,
        "entity": "user",
        "source": SOURCE,
        "ttl": "8d",
        "freshness_target": "5s",
        "features": features,
    }
    return Catalog.from_dict({**demo, "views": [view], "services": []})


def _events(now: int, rng: random.Random) -> list[dict[str, Any]]:
    """Per user: 40 events over 7 days plus 20 in the last hour (a busy user's tile spread)."""
    events = []
    for u in range(USERS):
        times = [now - rng.randrange(60_000, 7 * 86_400_000) for _ in range(40)]
        times += [now - rng.randrange(1_000, 3_600_000) for _ in range(20)]
        for t in times:
            events.append(
                {
                    "user_id": f"u_{u:06d}",
                    "merchant_id": f"m_{rng.randrange(50):05d}",
                    "amount": round(rng.uniform(1, 500), 2),
                    "event_time_ms": t,
                }
            )
    events.sort(key=lambda e: cast(int, e["event_time_ms"]))
    for seq, e in enumerate(events):
        e.update(event_id=f"b-{seq}", seq=seq, event_type="card_tx", currency="USD")
    return events


def _write_tiles(stack: Stack, catalog: Catalog, now: int) -> int:
    events = _events(now, random.Random(7))
    writes = []
    for p in range(PARTITIONS):
        mine = [e for e in events if zlib.crc32(e["user_id"].encode()) % PARTITIONS == p]
        proc = PartitionProcessor(catalog, SOURCE, p, now_ms=lambda: now)
        proc.process(
            RawRecord(i, e["user_id"].encode(), orjson.dumps(e)) for i, e in enumerate(mine)
        )
        writes += [c.write for c in proc.drain_changes()]
    for region in stack.settings.topology:
        client = redis_client(region, RedisRole.WRITER, stack.settings.redis, stack.secrets)
        writer = RedisTileWriter(client, f"redis-{region.name}")
        for i in range(0, len(writes), 2_000):
            writer.apply(writes[i : i + 2_000])
        client.close()
    return len(writes)


def _settings(state_dir: Path, ingress: IngressMode) -> StackSettings:
    """Every port free, nothing shared with a developer's stack (the test suite's helper); the
    head gets ``ingress``'s environment from the settings, exactly as ``stack up`` gives it."""
    settings = isolated_settings(state_dir, with_ray=True)
    return settings.model_copy(update={"ray": settings.ray.model_copy(update={"ingress": ingress})})


def _wait(url: str, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{url} never answered 200")


async def _measure(port: int, floor_port: int, quick: bool) -> dict[str, Any]:
    step = 3.0 if quick else 10.0
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}
    refs = [f"bench_user:{a}_{w}" for w in WINDOWS for a in AGGS]
    single = request_bytes(
        "127.0.0.1",
        port,
        "/us-east/v1/features",
        orjson.dumps({"entities": {"user": ["u_000007"]}, "features": refs}),
        headers,
    )
    batch = request_bytes(
        "127.0.0.1",
        port,
        "/us-east/v1/features",
        orjson.dumps({"entities": {"user": [f"u_{i:06d}" for i in range(100)]}, "features": refs}),
        headers,
    )
    columns = request_bytes(
        "127.0.0.1",
        port,
        "/us-east/v1/features",
        orjson.dumps(
            {
                "entities": {"user": [f"u_{i:06d}" for i in range(100)]},
                "features": refs,
                "format": "columns",
            }
        ),
        headers,
    )
    floor = request_bytes(
        "127.0.0.1", floor_port, "/", b'{"x":1}', {"content-type": "application/json"}
    )
    out: dict[str, Any] = {}
    await closed_loop("127.0.0.1", port, single, 4, 1.0)  # warm caches and connections
    await closed_loop("127.0.0.1", port, batch, 2, 1.0)
    at500 = await open_loop("127.0.0.1", port, single, 500, step * 2)
    out["single_500"] = at500.summary()
    ladder = []
    best = 0
    for rate in (100, 250, 500, 750, 1000, 1500, 2000, 2500, 3000):
        r = await open_loop("127.0.0.1", port, single, rate, step)
        ladder.append({"rate": rate, **r.summary()})
        if r.pct(0.99) > 20.0 or r.errors:
            break
        best = rate
    out["ladder"] = ladder
    closed = await closed_loop("127.0.0.1", port, single, 16, step)
    out["single_closed16"] = closed.summary()
    closed1 = await closed_loop("127.0.0.1", port, single, 1, step)
    out["single_closed1"] = closed1.summary()
    # Below and at the 50 req/s headline rate: on a small box that rate can exceed the capacity
    # for 100-entity reads, so the lower rates show the latency short of overload.
    for rate in (10, 25):
        low = await open_loop("127.0.0.1", port, batch, rate, step)
        out[f"batch100_{rate}rps"] = low.summary()
    b = await open_loop("127.0.0.1", port, batch, 50, step * 2)
    out["batch100_50rps"] = b.summary()
    bc = await closed_loop("127.0.0.1", port, batch, 4, step)
    out["batch100_closed4"] = bc.summary()
    await closed_loop("127.0.0.1", port, columns, 2, 1.0)
    bcol = await open_loop("127.0.0.1", port, columns, 50, step)
    out["batch100_columns_50rps"] = bcol.summary()
    bcol_closed = await closed_loop("127.0.0.1", port, columns, 4, step)
    out["batch100_columns_closed4"] = bcol_closed.summary()
    await closed_loop("127.0.0.1", floor_port, floor, 4, 1.0)
    f = await closed_loop("127.0.0.1", floor_port, floor, 16, step)
    out["floor_closed16"] = f.summary()
    const = request_bytes(
        "127.0.0.1", port, "/const", b'{"x":1}', {"content-type": "application/json"}
    )
    await closed_loop("127.0.0.1", port, const, 4, 1.0)
    out["serve_const_500"] = (await open_loop("127.0.0.1", port, const, 500, step)).summary()
    sc = await closed_loop("127.0.0.1", port, const, 16, step)
    out["serve_const_closed16"] = sc.summary()
    out["serve_const_rps"] = round(sc.rps, 1)
    out.update(
        single_p50_ms=at500.summary()["p50_ms"],
        single_p99_ms=at500.summary()["p99_ms"],
        single_max_rps=best,
        single_closed_rps=round(closed.rps, 1),
        batch100_p50_ms=b.summary()["p50_ms"],
        batch100_p99_ms=b.summary()["p99_ms"],
        single_local_share=_local_share(at500),
        batch100_local_share=_local_share(b),
        batch100_closed_rps=round(bc.rps, 1),
        batch100_columns_p99_ms=bcol.summary()["p99_ms"],
        batch100_columns_local_share=_local_share(bcol),
        batch100_columns_closed_rps=round(bcol_closed.rps, 1),
        floor_rps=round(f.rps, 1),
        ratio_to_floor=round(closed.rps / f.rps, 3) if f.rps else None,
    )
    return out


def _local_share(result: Result) -> float:
    """The fraction of answers the region's own Redis served: below 1.0 a latency figure is
    partly that of the fallback chain or of defaults, not of serving."""
    return round(result.stores.get("redis-us-east", 0) / max(1, len(result.latencies_s)), 4)


def _deploy_const() -> None:
    """A constant-returning deployment at ``/const``: Serve's own floor on the same ingress."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=512)
    class Const:
        async def __call__(self, request: Request) -> Response:
            await request.body()
            return Response(b'{"ok":true}', media_type="application/json")

    serve.run(cast(Any, Const).bind(), name="const", route_prefix="/const", blocking=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short steps (< 2 minutes in all)")
    parser.add_argument(
        "--ingress",
        choices=sorted(INGRESS_MODES),
        default=DEFAULT_INGRESS,
        help="RaySettings.ingress of the Ray head this run starts (serve_apps.deploy."
        "INGRESS_MODES; the default is the stack's default)",
    )
    parser.add_argument("--replicas", type=int, default=1, help="replicas per region")
    parser.add_argument(
        "--niceness",
        type=int,
        default=0,
        help="ServingConfig.niceness of the replicas (Ray's own default for workers is 15)",
    )
    args = parser.parse_args()
    # A ~/.ray/auth_token left by any local ray.init() turns token auth on for every new head,
    # and the stack's readiness probe does not send the token: this run's head opts out.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="fl-bench-"))
    stack = Stack.build(_settings(state, args.ingress), environ={})
    floor_proc = None
    try:
        for service in stack.services:
            if service.name.startswith(("redis", "dynamodb", "ray")):
                service.start()
        catalog = benchmark_catalog()
        now = time.time_ns() // 1_000_000
        n_writes = _write_tiles(stack, catalog, now)
        configs = configs_for_stack(
            stack.settings,
            [ApiKey.from_raw("bench", API_KEY)],
            dynamodb_credentials=(
                LOCAL_CREDENTIALS["aws_access_key_id"],
                LOCAL_CREDENTIALS["aws_secret_access_key"],
            ),
            catalog_inline=catalog.model_dump(mode="json"),
            limits=Limits(max_in_flight=256, default_deadline_ms=500),
            replicas=args.replicas,
        )
        configs = [c.model_copy(update={"niceness": args.niceness}) for c in configs]
        port = stack.settings.ray.serve_port
        deploy(configs, ray_address=stack.settings.ray.address, http_port=port)
        _wait(f"http://127.0.0.1:{port}/us-east/v1/ready")
        _deploy_const()
        _wait(f"http://127.0.0.1:{port}/const")
        floor_port = free_port()
        floor_proc = subprocess.Popen([sys.executable, "-c", FLOOR_APP, str(floor_port)])
        _wait(f"http://127.0.0.1:{floor_port}/")
        check = httpx.post(
            f"http://127.0.0.1:{port}/us-east/v1/features",
            headers={"x-api-key": API_KEY},
            json={
                "entities": {"user": ["u_000007"]},
                "features": [f"bench_user:{a}_{w}" for w in WINDOWS for a in AGGS],
            },
        )
        statuses = [v["status"] for v in check.json()["results"][0]["features"].values()]
        import uvloop

        figures = uvloop.run(_measure(port, floor_port, args.quick))
        figures.update(
            ingress=args.ingress,
            replicas=args.replicas,
            niceness=args.niceness,
            features=len(statuses),
            present=statuses.count("present"),
            tile_writes=n_writes,
            wall_s=round(time.monotonic() - started, 1),
        )
    finally:
        if floor_proc is not None:
            floor_proc.terminate()
            floor_proc.wait(10)
        try:
            from ray import serve

            serve.shutdown()  # type: ignore[no-untyped-call]
            import ray

            ray.shutdown()
        finally:
            stack.down(purge=True)
            shutil.rmtree(state, ignore_errors=True)
    record_run("serving", figures, command=current_command())
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
