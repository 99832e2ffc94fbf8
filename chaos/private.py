"""Run one drill on a private stack on free ports, then stop and purge it.

    .venv/bin/python -m chaos.private broker-restart --quick --kafka-brokers 3

The stack shares nothing with the default one but the jar cache (``cluster.isolated``), so a
drill runs beside a developer's stack or another run; its report goes under ``--reports`` and
its results line to ``benchmarks/results/drill-<name>.jsonl`` as for ``freshline chaos run``.
Exit status 0 when the drill passed, 1 when it failed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from chaos.runner import run_drill
from cluster.isolated import isolated_settings, with_brokers
from cluster.stack import Stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos.private", description=__doc__)
    parser.add_argument("drill")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kafka-brokers", type=int, choices=(1, 3), default=1)
    parser.add_argument("--reports", default="reports/chaos")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="freshline-drill-") as tmp:
        settings = with_brokers(isolated_settings(Path(tmp), with_ray=True), args.kafka_brokers)
        os.environ.update(settings.ray.client_env())  # ray.init in this process uses it
        stack = Stack.build(settings, environ={})
        try:
            report = run_drill(stack, args.drill, quick=args.quick, reports_dir=Path(args.reports))
        finally:
            stack.down(purge=True)
    print(f"{report.drill}: {report.verdict}  report: {report.files['json']}")
    for criterion in report.criteria:
        print(f"  {'PASS' if criterion.passed else 'FAIL'}  {criterion.name}: {criterion.measured}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
