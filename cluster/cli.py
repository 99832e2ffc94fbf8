"""``freshline``: the one command people use. Composition root: it reads the environment once,
builds settings, and hands them to the packages that do the work.

Exit codes: 0 success, 1 a Freshline error (message on stderr, no traceback), 2 bad usage,
3 ``stack status`` found a service down or unhealthy (``pipeline status``: no pipeline),
4 ``stack status`` found a service's port held by a process this state dir did not start.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from actors.config import DEFAULT_CONSUMERS, DEFAULT_OFFLINE_WRITERS, DEFAULT_SINK_SHARDS
from cluster import embeddings_cli, registry_cli, shadow_cli, training_job, validator_job
from cluster.cli_views import status_table
from cluster.services.base import ServiceStatus
from cluster.settings import StackSettings
from cluster.settings_env import settings_from_env
from cluster.stack import Stack
from features.errors import FreshlineError

EXIT_UNHEALTHY = 3
EXIT_FOREIGN = 4


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(stderr=False)
    try:
        settings = settings_from_env(os.environ)
        return int(args.handler(args, settings, console))
    except FreshlineError as exc:
        # Escaped: a catalog path such as views[user_spend] is not markup; not wrapped: one line.
        Console(stderr=True).print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
        return 1
    except KeyboardInterrupt:
        return 130


def _add_pipeline_verbs(verbs: Any) -> None:
    pipeline = verbs.add_parser("pipeline", help="the stream-to-feature pipeline (a Ray job)")
    pipeline_verbs = pipeline.add_subparsers(dest="pipeline_verb", required=True)
    p_up = pipeline_verbs.add_parser("up", help="submit the pipeline job (idempotent)")
    p_up.add_argument("--consumers", type=int, default=DEFAULT_CONSUMERS, help="consumer actors")
    p_up.add_argument(
        "--sink-shards",
        type=int,
        default=DEFAULT_SINK_SHARDS,
        help="sink actors per region and store, sharing the changelog partitions",
    )
    p_up.add_argument(
        "--offline-writers",
        type=int,
        default=DEFAULT_OFFLINE_WRITERS,
        help="offline writer actors sharing the Iceberg tables, each over its partitions",
    )
    p_up.set_defaults(handler=_pipeline_up)
    p_status = pipeline_verbs.add_parser("status", help="consumers, sinks, lag and dead letters")
    p_status.add_argument("--json", action="store_true")
    p_status.set_defaults(handler=_pipeline_status)
    p_down = pipeline_verbs.add_parser("down", help="stop the pipeline's actors")
    p_down.set_defaults(handler=_pipeline_down)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="freshline", description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)

    stack = verbs.add_parser("stack", help="the local stack: Kafka, Redis, DynamoDB, Iceberg, Ray")
    stack_verbs = stack.add_subparsers(dest="stack_verb", required=True)
    up = stack_verbs.add_parser("up", help="start every service that is not healthy (idempotent)")
    up.add_argument("--json", action="store_true", help="print the status as JSON")
    up.set_defaults(handler=_stack_up)
    down = stack_verbs.add_parser("down", help="stop what the stack started; keeps data")
    down.add_argument("--purge", action="store_true", help="also delete data, logs and topics")
    down.set_defaults(handler=_stack_down)
    status = stack_verbs.add_parser(
        "status",
        help="state of every service, writing nothing; exit 3 if one is down, 4 if a port is "
        "held by a process this state dir did not start",
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_stack_status)
    logs = stack_verbs.add_parser("logs", help="tail the services' logs")
    logs.add_argument("service", nargs="?", help="one service (default: all)")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("-n", "--lines", type=int, default=40)
    logs.set_defaults(handler=_stack_logs)

    _add_pipeline_verbs(verbs)

    serve = verbs.add_parser("serve", help="the per-region feature-serving applications")
    serve_verbs = serve.add_subparsers(dest="serve_verb", required=True)
    serve_verbs.add_parser("up", help="deploy one Serve app per region (idempotent)").set_defaults(
        handler=_serve_up
    )
    serve_verbs.add_parser("down", help="delete the region apps").set_defaults(handler=_serve_down)

    chaos = verbs.add_parser("chaos", help="failure drills judged by an oracle")
    chaos_verbs = chaos.add_subparsers(dest="chaos_verb", required=True)
    c_run = chaos_verbs.add_parser("run", help="run a drill (or all, or ci) against the stack")
    c_run.add_argument("drill", help="a drill's name, 'all' or 'ci' (see `freshline chaos list`)")
    c_run.add_argument("--quick", action="store_true", help="the short version CI runs")
    c_run.add_argument(
        "--reports", default="reports/chaos", help="folder for report.json and timeline.png"
    )
    c_run.set_defaults(handler=_chaos_run)
    chaos_verbs.add_parser("list", help="the drills and what each injects").set_defaults(
        handler=_chaos_list
    )

    demo = verbs.add_parser("demo", help="start the stack, stream demo events and show them live")
    demo.add_argument("--rate", type=float, default=300.0, help="events per second")
    demo.add_argument(
        "--duration", type=float, default=None, help="seconds (default: until Ctrl-C)"
    )
    demo.add_argument(
        "--no-live", action="store_true", help="print a summary instead of a live view"
    )
    demo.set_defaults(handler=_demo)

    training = verbs.add_parser(
        "training-set", help="a point-in-time training set from the offline tables (Ray Data)"
    )
    training_job.add_arguments(training)
    training.set_defaults(handler=training_job.run)
    _add_validate(verbs)
    _add_modules(verbs)
    return parser


def _add_modules(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Commands whose handlers live in a module of their own."""
    registry_cli.add_commands(verbs)
    shadow_cli.add_commands(verbs)
    embeddings_cli.add_commands(verbs)


def _add_validate(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = verbs.add_parser(
        "validate", help="serving's sampled answers recomputed offline and compared"
    )
    validator_job.add_arguments(validate)
    validate.set_defaults(handler=validator_job.run)


def _stack_up(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    stack = Stack.build(settings)
    if args.json:
        print(json.dumps([s.as_dict() for s in stack.up()], indent=2))
        return 0
    with console.status("starting the stack") as spinner:
        stack.up(lambda s: spinner.update(f"{s.name} ready; starting the next service"))
    console.print(status_table(stack.status()))
    return 0


def _stack_down(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    stopped = Stack.build(settings, create_secrets=False).down(purge=args.purge)
    console.print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    if args.purge:
        console.print(f"purged data under {settings.state_dir}")
    return 0


def _stack_status(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    statuses = Stack.build(settings, create_secrets=False).status()
    if args.json:
        print(json.dumps([s.as_dict() for s in statuses], indent=2))
    else:
        console.print(status_table(statuses))
    return status_exit_code(statuses)


def status_exit_code(statuses: Sequence[ServiceStatus]) -> int:
    """4 when a port is held by someone else (``stack up`` would fail: stop that process or choose
    other ports), else 3 when a service is not healthy (``stack up`` starts it), else 0."""
    if any(s.state == "foreign" for s in statuses):
        return EXIT_FOREIGN
    return 0 if all(s.healthy for s in statuses) else EXIT_UNHEALTHY


def _stack_logs(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    services = Stack.build(settings, create_secrets=False).services
    names = [args.service] if args.service else [s.name for s in services]
    files = [settings.log_dir / f"{name}.log" for name in names]
    files = [f for f in files if f.exists()]
    if not files:
        console.print(f"no logs yet under {settings.log_dir}")
        return 0
    argv = ["tail", f"-n{args.lines}", *(["-F"] if args.follow else []), *map(str, files)]
    return subprocess.call(argv)


def _pipeline_up(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import pipeline

    with console.status("submitting the pipeline job and waiting for its consumers"):
        pipeline.up(
            settings,
            args.consumers,
            sink_shards=args.sink_shards,
            offline_writers=args.offline_writers,
        )
    return _pipeline_status(argparse.Namespace(json=False), settings, console)


def _pipeline_status(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import pipeline
    from cluster.cli_views import pipeline_tables

    state = pipeline.status(settings)
    if args.json:
        print(json.dumps(state, indent=2, default=str))
    elif state is None:
        console.print("no pipeline is running; start it with `freshline pipeline up`")
    else:
        for table in pipeline_tables(state):
            console.print(table)
    return 0 if state is not None else EXIT_UNHEALTHY


def _pipeline_down(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import pipeline

    with console.status("stopping the pipeline job (it drains every actor first)"):
        jobs = pipeline.down(settings)
    console.print(f"stopped: {', '.join(jobs)}" if jobs else "no pipeline job was running")
    return 0


def _serve_up(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import serving

    with console.status("deploying the region applications on Ray Serve"):
        urls = serving.serve_up(settings)
    for url in urls:
        console.print(f"{url}/docs")
    console.print(f"API key (X-API-Key header): {serving.api_key_file(settings)}")
    return 0


def _serve_down(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster import serving

    serving.serve_down(settings)
    console.print("region applications deleted")
    return 0


def _chaos_run(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from pathlib import Path

    from chaos.report import verdict_table
    from chaos.runner import drill_names, run_drill

    stack = Stack.build(settings)
    failed = []
    for name in drill_names(args.drill):
        with console.status(f"drill {name}{' (quick)' if args.quick else ''}"):
            report = run_drill(stack, name, quick=args.quick, reports_dir=Path(args.reports))
        console.print(verdict_table(report))
        console.print(f"report: {report.files['json']}  timeline: {report.files['png']}")
        if not report.passed:
            failed.append(name)
    if failed:
        console.print(f"[bold red]failed:[/] {', '.join(failed)}")
    return 1 if failed else 0


def _chaos_list(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from chaos.drills import DRILLS

    for drill in DRILLS.values():
        console.print(f"{drill.name:16} {'ci ' if drill.in_ci else '   '} {drill.summary}")
    return 0


def _demo(args: argparse.Namespace, settings: StackSettings, console: Console) -> int:
    from cluster.demo import run_demo

    return run_demo(
        settings, console, rate=args.rate, duration_s=args.duration, live=not args.no_live
    )


if __name__ == "__main__":
    sys.exit(main())
