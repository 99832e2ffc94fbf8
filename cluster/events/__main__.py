"""``python -m cluster.events``: produce demo card transactions; prints a one-line JSON report.

Exit codes: 0 done, 1 delivery or broker failure, 2 invalid arguments.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from cluster.events.runner import GeneratorReport, run_generator
from cluster.events.synth import MALFORMED_KINDS, GeneratorConfig
from cluster.settings import KafkaSettings
from features import demo
from features.errors import ConfigError, FreshlineError

DEFAULT_BOOTSTRAP = KafkaSettings().bootstrap
DEFAULT_TOPIC = demo.TOPIC


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m cluster.events", description=__doc__)
    p.add_argument("--bootstrap", default=DEFAULT_BOOTSTRAP)
    p.add_argument("--topic", default=DEFAULT_TOPIC)
    p.add_argument("--ledger", required=True, help="JSON-lines ledger file (appended to)")
    p.add_argument("--run-id", default=None, help="default: a random 12-hex-digit id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=500.0, help="events per second")
    p.add_argument("--duration", type=float, default=None, help="seconds")
    p.add_argument("--max-events", type=int, default=None)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--merchants", type=int, default=500)
    p.add_argument("--user-zipf", type=float, default=0.9)
    p.add_argument("--merchant-zipf", type=float, default=1.1)
    p.add_argument("--out-of-order-share", type=float, default=0.02)
    p.add_argument("--late-share", type=float, default=0.0)
    p.add_argument("--malformed-share", type=float, default=0.0)
    p.add_argument(
        "--malformed-kinds",
        default=",".join(MALFORMED_KINDS),
        help="comma-separated subset of: " + ", ".join(MALFORMED_KINDS),
    )
    return p


def config_from_args(args: argparse.Namespace) -> GeneratorConfig:
    duration, max_events = args.duration, args.max_events
    if duration is None and max_events is None:
        duration = 30.0
    return GeneratorConfig.from_mapping(
        {
            "run_id": args.run_id or uuid.uuid4().hex[:12],
            "seed": args.seed,
            "rate_per_s": args.rate,
            "duration_s": duration,
            "max_events": max_events,
            "n_users": args.users,
            "n_merchants": args.merchants,
            "user_zipf_s": args.user_zipf,
            "merchant_zipf_s": args.merchant_zipf,
            "out_of_order_share": args.out_of_order_share,
            "late_share": args.late_share,
            "malformed_share": args.malformed_share,
            "malformed_kinds": [k.strip() for k in args.malformed_kinds.split(",") if k.strip()],
        }
    )


def main(
    argv: Sequence[str] | None = None,
    run: Callable[..., GeneratorReport] = run_generator,
) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        report = run(config, args.bootstrap, args.topic, args.ledger)
    except ConfigError as exc:
        _emit(sys.stderr, {"error": type(exc).__name__, "field": exc.field, "message": str(exc)})
        return 2
    except FreshlineError as exc:
        _emit(sys.stderr, {"error": type(exc).__name__, "message": str(exc)})
        return 1
    sys.stdout.write(report.to_json_line() + "\n")
    return 0


def _emit(stream: Any, payload: dict[str, Any]) -> None:
    stream.write(orjson.dumps(payload).decode() + "\n")


if __name__ == "__main__":
    sys.exit(main())
