"""Serving latency and capacity over HTTP, with the floor (a bare Starlette app) in the same run.

    .venv/bin/python benchmarks/serving.py --quick      # under two minutes
    .venv/bin/python benchmarks/serving.py              # longer runs per step

It starts its own Redis, DynamoDB and Ray head on free ports (Kafka is not needed) and reads
**live data**: a child process (``live_feed.py``) writes the history of a 50-feature benchmark view
for 200 users through the partition processors and the Redis tile writer, then keeps events for
the same users flowing at ``--feed-rate`` events/s (default 1,000; 0 reads static data), folding
and applying changed blocks to both regions' Redis every commit interval, as the pipeline does.
Single-entity reads rotate over the 200 users, 100-entity reads alternate between the two halves.
It deploys both regions' Serve applications with ``serve_apps.deploy.deploy``, then:

1. open loop, one entity x 50 features at 500 req/s -> ``single_p50_ms``, ``single_p99_ms``,
   ``changed_share`` (the share of reads whose entity's block was written since that entity's
   previous read: how live the data was);
2. open loop at 100, 250, 500, 750, 1000, ... req/s until p99 > 20 ms -> ``single_max_rps``
   (the highest rate that held; 0 when even 100 req/s did not);
3. closed loop, 16 connections -> ``single_closed_rps`` (capacity);
4. open loop, 100 entities x 50 features at 10 and 25 req/s (``batch100_10rps``,
   ``batch100_25rps``), then at 50 req/s -> ``batch100_p50_ms``, ``batch100_p99_ms``; the same
   read in the columnar response shape (``"format": "columns"``) at 50 req/s and closed loop ->
   ``batch100_columns_p99_ms``, ``batch100_columns_closed_rps``;
5. the floors: Serve's own constant app on the same ingress, closed loop, 16 connections ->
   ``serve_const_rps``, ``ratio_to_serve_const = single_closed_rps / serve_const_rps``; a bare
   Starlette app on uvicorn -> ``floor_rps``, ``ratio_to_floor``;
6. the front door's cost: us-east's front door (HAProxy, ``cluster/services/haproxy.py``) is
   started only now, so steps 1-5 run without its health checks, and the step-1 read at the
   same 500 req/s goes alternately through the door and straight at Serve's ingress, in
   :data:`DOOR_ROUNDS` rounds of one block each, ordered door-direct then direct-door (so a
   trend in the box's load falls on both) -> ``front_door_p50_ms``, ``front_door_p99_ms``,
   ``direct_p50_ms``, ``direct_p99_ms`` and the door's cost ``front_door_cost_p50_ms``,
   ``front_door_cost_p99_ms`` (door minus direct).

Every step's summary counts which store answered (``stores``); ``single_local_share`` and
``batch100_local_share`` are the fractions the local Redis served, so a latency measured on
answers that fell back to another store or to defaults is visible as such.

The last line printed is one JSON object with every figure, also appended to
`benchmarks/results/serving.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson
from live_feed import changed_share, user_id
from live_feed import run as run_feed
from loadgen import Result, closed_loop, open_loop, request_bytes

from cluster.isolated import isolated_settings
from cluster.process import free_port
from cluster.results import current_command, record_run
from cluster.settings import IngressMode, StackSettings
from cluster.stack import Stack
from features.catalog import Catalog
from features.demo import SOURCE, card_transactions_catalog
from regions.aws import LOCAL_CREDENTIALS
from serve_apps.config import ApiKey, Limits, new_api_key
from serve_apps.deploy import DEFAULT_INGRESS, INGRESS_MODES, configs_for_stack, deploy

WINDOWS = ("5m", "10m", "30m", "1h", "2h", "6h", "12h", "24h", "3d", "7d")
AGGS = ("count", "sum", "mean", "max", "min")
USERS = 200
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


def _requests(port: int, ids: list[list[str]], refs: list[str], **extra: Any) -> list[bytes]:
    headers = {"x-api-key": API_KEY, "content-type": "application/json"}
    return [
        request_bytes(
            "127.0.0.1",
            port,
            "/us-east/v1/features",
            orjson.dumps({"entities": {"user": group}, "features": refs, **extra}),
            headers,
        )
        for group in ids
    ]


SINGLES = [[user_id(u)] for u in range(USERS)]
SINGLE_RATE = 500  # req/s of the headline single-entity read (step 1) and of the door's step
DOOR_ROUNDS = 4  # of the front door's step: each round one block through the door, one direct
HALVES = [[user_id(u) for u in range(h, h + USERS // 2)] for h in (0, USERS // 2)]


async def _measure(port: int, floor_port: int, quick: bool) -> dict[str, Any]:
    step = 3.0 if quick else 10.0
    refs = [f"bench_user:{a}_{w}" for w in WINDOWS for a in AGGS]
    single = _requests(port, SINGLES, refs)
    batch = _requests(port, HALVES, refs)
    columns = _requests(port, HALVES, refs, format="columns")
    floor = request_bytes(
        "127.0.0.1", floor_port, "/", b'{"x":1}', {"content-type": "application/json"}
    )
    out: dict[str, Any] = {}
    await closed_loop("127.0.0.1", port, single, 4, 1.0)  # warm connections and imports
    await closed_loop("127.0.0.1", port, batch, 2, 1.0)
    at500 = await open_loop("127.0.0.1", port, single, SINGLE_RATE, step * 2)
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
        serve_const_rps=round(sc.rps, 1),
        ratio_to_serve_const=round(closed.rps / sc.rps, 3) if sc.rps else None,
        floor_rps=round(f.rps, 1),
        ratio_to_floor=round(closed.rps / f.rps, 3) if f.rps else None,
    )
    out["_reads"] = {"single": _reads(at500, SINGLES), "batch100": _reads(b, HALVES)}
    return out


async def _front_door_cost(door_port: int, port: int, quick: bool) -> dict[str, Any]:
    """Single reads at :data:`SINGLE_RATE` through the front door and straight at Serve's ingress,
    alternated block by block (door-direct, direct-door, ...), each path's blocks pooled."""
    block_s = 1.5 if quick else 5.0
    refs = [f"bench_user:{a}_{w}" for w in WINDOWS for a in AGGS]
    paths = {"front_door": door_port, "direct": port}
    requests = {name: _requests(p, SINGLES, refs) for name, p in paths.items()}
    blocks: dict[str, list[Result]] = {name: [] for name in paths}
    for name, p in paths.items():
        await closed_loop("127.0.0.1", p, requests[name], 4, 1.0)  # warm both paths alike
    for i in range(DOOR_ROUNDS):
        order = ("front_door", "direct") if i % 2 == 0 else ("direct", "front_door")
        for name in order:
            r = await open_loop("127.0.0.1", paths[name], requests[name], SINGLE_RATE, block_s)
            blocks[name].append(r)
    door, direct = _pooled(blocks["front_door"]), _pooled(blocks["direct"])
    return {
        "front_door_500": door.summary(),
        "direct_500": direct.summary(),
        "front_door_p50_ms": round(door.pct(0.50), 3),
        "front_door_p99_ms": round(door.pct(0.99), 3),
        "direct_p50_ms": round(direct.pct(0.50), 3),
        "direct_p99_ms": round(direct.pct(0.99), 3),
        "front_door_cost_p50_ms": round(door.pct(0.50) - direct.pct(0.50), 3),
        "front_door_cost_p99_ms": round(door.pct(0.99) - direct.pct(0.99), 3),
        "front_door_local_share": _local_share(door),
        "direct_local_share": _local_share(direct),
    }


def _pooled(results: list[Result]) -> Result:
    """One path's blocks as one result (latencies, statuses, stores, refusals; no offsets: each
    block's are from its own start)."""
    pooled = Result()
    for r in results:
        pooled.latencies_s += r.latencies_s
        pooled.errors += r.errors
        pooled.elapsed_s += r.elapsed_s
        pooled.statuses = dict(Counter(pooled.statuses) + Counter(r.statuses))
        pooled.stores = dict(Counter(pooled.stores) + Counter(r.stores))
        pooled.refusals = dict(Counter(pooled.refusals) + Counter(r.refusals))
    return pooled


def _start_front_door(stack: Stack, region: str) -> int:
    """Start ``region``'s front door and wait until it forwards to the region's app; its port."""
    service = stack.service(f"front-door-{region}")
    service.start()
    index = stack.settings.topology.names.index(region)
    door_port = stack.settings.front_door.ports[index]
    _wait(f"http://127.0.0.1:{door_port}/{region}/v1/ready")
    return door_port


def _reads(result: Result, ids: list[list[str]]) -> list[tuple[float, list[int]]]:
    """(wall send time, user indexes) of each answered request, for :func:`changed_share`."""
    users = [[int(u[2:]) for u in group] for group in ids]
    return [(sent, users[index]) for sent, index in result.sends]


def _local_share(result: Result) -> float:
    """The fraction of answers the region's own Redis served: below 1.0 a latency figure is
    partly that of the fallback chain or of defaults, not of serving."""
    return round(result.stores.get("redis-us-east", 0) / max(1, len(result.latencies_s)), 4)


def _start_feed(
    stack: Stack, catalog: Catalog, rate: float, stop: Event, log_path: Path
) -> BaseProcess:
    """The live feed's process, returned once the users' history is in every region's Redis."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    proc = ctx.Process(
        target=run_feed,
        args=(
            stack.settings.model_dump_json(),
            orjson.dumps(catalog.model_dump(mode="json")),
            USERS,
            rate,
            ready,
            stop,
            str(log_path),
        ),
        name="freshline-live-feed",
    )
    proc.start()
    deadline = time.monotonic() + 120
    while not ready.wait(0.5):
        if not proc.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the live feed never became ready (exit code {proc.exitcode})")
    return proc


def _deploy_regions(stack: Stack, catalog: Catalog, args: argparse.Namespace) -> int:
    """Both regions' Serve applications and the constant app; returns the ingress port."""
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
    return port


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


def _args() -> argparse.Namespace:
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
    parser.add_argument(
        "--feed-rate",
        type=float,
        default=1000.0,
        help="events/s for the benchmark's users while it reads (0: static data)",
    )
    return parser.parse_args()


def main() -> None:
    args = _args()
    # A ~/.ray/auth_token left by any local ray.init() turns token auth on for every new head,
    # and the stack's readiness probe does not send the token: this run's head opts out.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    started = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="fl-bench-"))
    stack = Stack.build(_settings(state, args.ingress), environ={})
    floor_proc = feed = None
    stop = multiprocessing.get_context("spawn").Event()
    log_path = state / "feed.npz"
    try:
        for service in stack.services:
            if service.name.startswith(("redis", "dynamodb", "ray")):
                service.start()
        catalog = benchmark_catalog()
        feed = _start_feed(stack, catalog, args.feed_rate, stop, log_path)
        port = _deploy_regions(stack, catalog, args)
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
        door_port = _start_front_door(stack, "us-east")
        figures.update(uvloop.run(_front_door_cost(door_port, port, args.quick)))
        stop.set()
        feed.join(60)
        reads = figures.pop("_reads")
        figures["changed_share"], feed_figures = changed_share(log_path, reads["single"])
        figures["batch100_changed_share"], _ = changed_share(log_path, reads["batch100"])
        figures.update(
            feed_rate=args.feed_rate,
            feed_events_per_s=feed_figures["events_per_s"],
        )
        figures.update(
            ingress=args.ingress,
            replicas=args.replicas,
            niceness=args.niceness,
            features=len(statuses),
            present=statuses.count("present"),
            wall_s=round(time.monotonic() - started, 1),
        )
    finally:
        stop.set()
        if feed is not None and feed.is_alive():
            feed.kill()
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
