"""How long `freshline stack up` takes: cold (nothing cached), warm (data kept, services stopped)
and already up (the idempotent no-op). Prints one JSON line last and appends it to
`benchmarks/results/stack_up.jsonl`.

    .venv/bin/python benchmarks/stack_up.py [--skip-cold]

"Cold" uses an empty jar cache and an empty Maven repository, so it includes downloading the broker
from Maven Central; it does not include `pip install` (see `make setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cluster.isolated import isolated_settings
from cluster.results import current_command, record_run
from cluster.stack import Stack


def _timed_up(stack: Stack) -> float:
    started = time.perf_counter()
    stack.up()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--skip-cold", action="store_true", help="keep the jar and Maven caches")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fl-bench-") as tmp:
        settings = isolated_settings(Path(tmp) / "state", with_ray=True)
        if not args.skip_cold:
            settings = settings.model_copy(update={"jar_cache_dir": Path(tmp) / "jars"})
            os.environ["MAVEN_OPTS"] = f"-Dmaven.repo.local={Path(tmp) / 'm2'}"
        stack = Stack.build(settings, environ={})
        try:
            cold = _timed_up(stack)
            noop = _timed_up(stack)
            stack.down()
            warm = _timed_up(stack)
        finally:
            stack.down(purge=True)
    result = {
        "cold_s": round(cold, 1),
        "warm_s": round(warm, 1),
        "already_up_s": round(noop, 2),
        "cold_includes_jar_download": not args.skip_cold,
    }
    record_run("stack_up", result, command=current_command())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
