"""A flood from Debian's ``wrk`` (C, one thread) instead of a Python process, so that the flood's
own loop lag is not part of any figure; the drill's Python probe keeps judging each answer.

The Lua script (written per run) cycles the drill's raw HTTP requests and counts, per wrk thread,
the answers by status and the 503s that carried ``Retry-After``; ``done`` gathers the threads'
counts and prints them with wrk's latency percentiles as one JSON line after :data:`_MARK`. wrk
cannot tell which request an answer belongs to, so its latencies are those of every answer,
refused or not: per-answer latencies come from the probe.

A flood that honours ``Retry-After`` defines wrk's ``delay()``: each answer queues the wait it
asked for (0 but for a 503 with ``Retry-After``) and each connection's next request takes the
oldest wait first. wrk calls ``delay()`` once per answer, but its Lua state is per thread, not per
connection, so when several answers arrive in one loop turn a wait may fall on another of the
identical connections: every refusal still makes one client wait as long as it asked.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from features.errors import StackError

_MARK = "FRESHLINE-WRK "
_SCRIPT = """
local requests = {%(requests)s}
local i = 0
counts = {}
retry_after = 0
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function request()
  i = i %% #requests + 1
  return requests[i]
end

local waits, first, last = {}, 1, 0

function response(status, headers, body)
  local key = tostring(status)
  counts[key] = (counts[key] or 0) + 1
  local asked = headers["retry-after"] or headers["Retry-After"]
  if status == 503 and asked then
    retry_after = retry_after + 1
  end
  if delay then  -- defined only when the flood honours Retry-After
    last = last + 1
    waits[last] = (status == 503 and asked) and (tonumber(asked) or 1) * 1000 or 0
  end
end
%(delay)s
function done(summary, latency, requests)
  local parts, total, with_retry = {}, {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("counts")) do total[status] = (total[status] or 0) + n end
    with_retry = with_retry + thread:get("retry_after")
  end
  for status, n in pairs(total) do table.insert(parts, string.format('"%%s":%%d', status, n)) end
  local e = summary.errors
  io.write(string.format(
    '%(mark)s{"statuses":{%%s},"retry_after":%%d,"requests":%%d,"duration_us":%%d,' ..
    '"socket_errors":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    table.concat(parts, ","), with_retry, summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class WrkSummary:
    """What one wrk flood did: answers by status, 503s with ``Retry-After``, and the latency
    percentiles of every answer (microseconds)."""

    statuses: dict[int, int] = field(default_factory=dict)
    retry_after: int = 0
    requests: int = 0
    duration_s: float = 0.0
    socket_errors: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")


_DELAY = """
function delay()
  if first > last then return 0 end
  local ms = waits[first]
  waits[first] = nil
  first = first + 1
  return ms
end
"""


def lua_script(requests: Sequence[bytes], *, honor_retry_after: bool = False) -> str:
    """The flood's script: ``requests`` as Lua string literals (every byte escaped, so any body
    is safe), sent round-robin; with ``honor_retry_after``, a wait after each 503 that asks."""
    literals = ("".join(f"\\{b}" for b in raw) for raw in requests)
    return _SCRIPT % {
        "requests": ",".join(f'"{lit}"' for lit in literals),
        "mark": _MARK,
        "delay": _DELAY if honor_retry_after else "",
    }


def parse_summary(output: str) -> WrkSummary:
    """The summary line ``done`` printed; StackError if wrk printed none (it failed)."""
    for line in output.splitlines():
        if line.startswith(_MARK):
            raw = orjson.loads(line[len(_MARK) :])
            return WrkSummary(
                statuses={int(k): v for k, v in raw["statuses"].items()},
                retry_after=raw["retry_after"],
                requests=raw["requests"],
                duration_s=raw["duration_us"] / 1e6,
                socket_errors=raw["socket_errors"],
                p50_ms=raw["p50_us"] / 1e3,
                p99_ms=raw["p99_us"] / 1e3,
            )
    raise StackError(f"wrk printed no summary: {output[-500:]!r}")


class WrkFlood:
    """``with WrkFlood(url, requests, connections=256, max_s=120) as flood: ...``; ``summary``
    is set when the block ends (wrk is stopped with SIGINT, on which it still reports).
    ``honor_retry_after``: clients that wait as a 503's ``Retry-After`` asks."""

    def __init__(
        self,
        url: str,
        requests: Sequence[bytes],
        *,
        connections: int,
        max_s: float,
        honor_retry_after: bool = False,
    ) -> None:
        wrk = shutil.which("wrk")
        if wrk is None:
            raise StackError("wrk is missing: apt-get install -y wrk (make setup does this)")
        self._dir = tempfile.TemporaryDirectory(prefix="freshline-wrk-")
        script = Path(self._dir.name) / "flood.lua"
        script.write_text(lua_script(requests, honor_retry_after=honor_retry_after))
        self._argv = [
            wrk,
            "-t1",  # one thread: the box has two cores that the server under test needs
            f"-c{connections}",
            f"-d{max(1, round(max_s))}s",
            "--timeout=10s",
            "-s",
            str(script),
            url,
        ]
        self._proc: subprocess.Popen[str] | None = None
        self.summary = WrkSummary()

    def __enter__(self) -> WrkFlood:
        self._proc = subprocess.Popen(
            self._argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        output, _ = self._proc.communicate(timeout=30)
        self._dir.cleanup()
        self.summary = parse_summary(output)
