"""A real Prometheus for drills: the shipped alert rules, evaluated on what it scrapes from the
stack's Ray metrics endpoint.

- :func:`drill_rules` copies ``cluster/observability/alerts.yml`` with every ``for:`` shortened
  (divided by ``speedup``, never below ``floor_ms``) and not one other byte changed;
  :func:`rule_differences` proves it against the shipped file: same alerts, same expressions,
  labels and annotations, only ``for:`` lines differ.
- :func:`render_config` is the ``prometheus.yml``: one job scraping the metrics endpoint, the rules
  evaluated every ``eval_s``.
- :class:`Prometheus` runs Debian's ``prometheus`` on a free port with its TSDB in a temporary
  directory for the duration of a ``with`` block, and reads its HTTP API.
- :func:`parse_alerts` and :func:`parse_vector` turn that API's JSON into values, and
  :class:`AlertLog` turns successive polls of the active alerts into episodes (first listed,
  firing, gone), from which a drill reads when an alert fired and when it resolved.

The shortened durations are the only difference from production, and a drill says so: ``for:``
decides how long a condition must hold, not whether the expression sees it.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from cluster.exceptions import MissingTool
from cluster.process import free_port
from features.errors import DataError, StackError

SHIPPED_RULES = Path(__file__).resolve().parent.parent / "cluster" / "observability" / "alerts.yml"
JOB = "freshline"
_FOR_LINE = re.compile(r"^(?P<indent>\s*)for: (?P<duration>\S+)\s*$")
_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_MS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
_READY_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0
_API_TIMEOUT_S = 5.0


class PrometheusApiError(DataError):
    """An answer of Prometheus's HTTP API that is not ``{"status": "success", ...}``."""


def parse_duration(text: str) -> int:
    """A Prometheus duration (``90s``, ``5m``, ``1h30m``) in milliseconds."""
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise DataError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_MS[u] for n, u in parts)


def format_duration(ms: int) -> str:
    """The shortest exact Prometheus form of ``ms`` among ``ms``, ``s`` and ``m``."""
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1_000 == 0:
        return f"{ms // 1_000}s"
    return f"{ms}ms"


def drill_rules(shipped: str, *, speedup: int, floor_ms: int) -> str:
    """``shipped`` with each ``for: <d>`` line now ``for: max(d / speedup, floor_ms)``; every other
    line is kept byte for byte (a text edit, not a YAML round trip, which would re-quote and
    re-wrap the expressions)."""
    lines = shipped.splitlines(keepends=True)
    out = []
    for line in lines:
        found = _FOR_LINE.match(line)
        if found is None:
            out.append(line)
            continue
        short = max(floor_ms, parse_duration(found["duration"]) // speedup)
        ending = line[len(line.rstrip("\r\n")) :]
        out.append(f"{found['indent']}for: {format_duration(short)}{ending}")
    return "".join(out)


def _rules(text: str) -> list[dict[str, Any]]:
    groups = yaml.safe_load(text)["groups"]
    return [dict(rule) for group in groups for rule in group["rules"]]


def rule_differences(shipped: str, copy: str) -> list[str]:
    """Why ``copy`` is not the shipped rule file with shortened ``for:`` only; empty when it is.
    Compares the parsed rules (every field but ``for``, expressions as exact strings) and the raw
    lines (the same count, any line that differs is a ``for:`` line in both)."""
    problems = []
    ours, theirs = _rules(shipped), _rules(copy)
    if [r.get("alert") for r in ours] != [r.get("alert") for r in theirs]:
        problems.append("the copy does not hold the same alerts in the same order")
    for a, b in zip(ours, theirs, strict=False):
        for key in sorted((set(a) | set(b)) - {"for"}):
            if a.get(key) != b.get(key):
                problems.append(f"{a.get('alert')}: {key} differs")
    old, new = shipped.splitlines(), copy.splitlines()
    if len(old) != len(new):
        problems.append(f"{len(new)} lines instead of {len(old)}")
    for number, (x, y) in enumerate(zip(old, new, strict=False), start=1):
        if x != y and not (_FOR_LINE.match(x) and _FOR_LINE.match(y)):
            problems.append(f"line {number} differs and is not a for: line")
    return problems


def render_config(
    *, target: str, rule_file: Path, scrape_s: float, eval_s: float, job: str = JOB
) -> str:
    """``prometheus.yml``: ``target`` (``host:port`` serving ``/metrics``) scraped every
    ``scrape_s`` with a timeout of the same length, the rules in ``rule_file`` every ``eval_s``."""
    config = {
        "global": {
            "scrape_interval": format_duration(round(scrape_s * 1000)),
            "scrape_timeout": format_duration(round(scrape_s * 1000)),
            "evaluation_interval": format_duration(round(eval_s * 1000)),
        },
        "rule_files": [str(rule_file)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [target]}]}],
    }
    return str(yaml.safe_dump(config, sort_keys=False))


@dataclass(frozen=True)
class AlertState:
    """One active alert of ``/api/v1/alerts``: ``state`` is ``pending`` or ``firing``."""

    name: str
    labels: tuple[tuple[str, str], ...]  # sorted, without ``alertname``
    state: str
    value: float

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        return self.name, self.labels


def _data(payload: Mapping[str, Any]) -> Any:
    if payload.get("status") != "success":
        raise PrometheusApiError(
            f"Prometheus API answered {payload.get('status')!r}: {payload.get('error')}"
        )
    return payload["data"]


def parse_alerts(payload: Mapping[str, Any]) -> list[AlertState]:
    """The active (pending or firing) alerts of an ``/api/v1/alerts`` answer."""
    out = []
    for alert in _data(payload)["alerts"]:
        labels = dict(alert["labels"])
        name = labels.pop("alertname")
        out.append(
            AlertState(
                name=name,
                labels=tuple(sorted(labels.items())),
                state=str(alert["state"]),
                value=float(alert.get("value", "nan")),
            )
        )
    return out


def parse_vector(payload: Mapping[str, Any]) -> list[tuple[dict[str, str], float]]:
    """The samples of an instant ``/api/v1/query`` answer: (labels, value)."""
    data = _data(payload)
    if data["resultType"] != "vector":
        raise PrometheusApiError(f"expected an instant vector, got {data['resultType']}")
    return [(dict(s["metric"]), float(s["value"][1])) for s in data["result"]]


@dataclass
class Episode:
    """One alert (name and labels) from the poll that first listed it to the first that did not:
    ``firing_s`` is the first poll that saw it firing (None: it was only ever pending), ``gone_s``
    the first poll without it (None: still active at the last poll)."""

    name: str
    labels: tuple[tuple[str, str], ...]
    seen_s: float
    firing_s: float | None = None
    gone_s: float | None = None

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        own = dict(self.labels)
        return self.name == name and all(own.get(k) == v for k, v in labels.items())

    def describe(self) -> str:
        """``Alert{k=v,...}`` without the severity label (each alert has one severity)."""
        tags = ",".join(f"{k}={v}" for k, v in self.labels if k != "severity")
        return f"{self.name}{{{tags}}}" if tags else self.name


class AlertLog:
    """Episodes of every alert, from polls of ``/api/v1/alerts`` at increasing times. An alert
    resolves by leaving the list (Prometheus 2.42 has no ``keep_firing_for``), so a firing
    episode ends at the first poll that does not list it; listed again later, it is a new one."""

    def __init__(self) -> None:
        self.episodes: list[Episode] = []
        self._open: dict[tuple[str, tuple[tuple[str, str], ...]], Episode] = {}

    def observe(self, t_s: float, alerts: Sequence[AlertState]) -> None:
        listed = {alert.key: alert for alert in alerts}
        for key, alert in listed.items():
            episode = self._open.get(key)
            if episode is None:
                episode = Episode(alert.name, alert.labels, seen_s=t_s)
                self._open[key] = episode
                self.episodes.append(episode)
            if alert.state == "firing" and episode.firing_s is None:
                episode.firing_s = t_s
        for key in [k for k in self._open if k not in listed]:
            self._open.pop(key).gone_s = t_s

    def first_firing(self, name: str, labels: Mapping[str, str], after_s: float) -> Episode | None:
        """The first episode of ``name`` with ``labels`` that fired at or after ``after_s``."""
        fired = [
            e
            for e in self.episodes
            if e.matches(name, labels) and e.firing_s is not None and e.firing_s >= after_s
        ]
        return min(fired, key=lambda e: e.seen_s, default=None)

    def firing_now(self, name: str, labels: Mapping[str, str]) -> bool:
        return any(e.firing_s is not None and e.matches(name, labels) for e in self._open.values())

    def active_now(self, name: str, labels: Mapping[str, str]) -> bool:
        return any(e.matches(name, labels) for e in self._open.values())

    def fired_between(self, start_s: float, end_s: float) -> list[Episode]:
        """Episodes that were firing at some poll in [start_s, end_s]."""
        return [
            e
            for e in self.episodes
            if e.firing_s is not None
            and e.firing_s <= end_s
            and (e.gone_s is None or e.gone_s > start_s)
        ]


def rule_errors(payload: Mapping[str, Any]) -> list[str]:
    """Rules of an ``/api/v1/rules`` answer whose last evaluation failed, with the error."""
    return [
        f"{rule['name']}: {rule.get('lastError', '')}"
        for group in _data(payload)["groups"]
        for rule in group["rules"]
        if rule.get("health") == "err"
    ]


class Prometheus:
    """Debian's ``prometheus`` scraping ``target`` and evaluating ``rules`` (YAML text), on a
    free port with its TSDB, config and log in a temporary directory, for a ``with`` block.
    The exit stops the process (SIGTERM, then SIGKILL) and deletes the directory."""

    def __init__(self, target: str, rules: str, *, scrape_s: float, eval_s: float) -> None:
        self._target = target
        self._rules = rules
        self._scrape_s = scrape_s
        self._eval_s = eval_s
        self._home: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None
        self.url = ""

    def __enter__(self) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            raise MissingTool("prometheus", "apt-get install -y prometheus (make setup does this)")
        self._home = Path(tempfile.mkdtemp(prefix="fl-prometheus-"))
        try:
            self._start(binary, self._home)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self, binary: str, home: Path) -> None:
        rule_file = home / "alerts.yml"
        rule_file.write_text(self._rules)
        config = home / "prometheus.yml"
        config.write_text(
            render_config(
                target=self._target,
                rule_file=rule_file,
                scrape_s=self._scrape_s,
                eval_s=self._eval_s,
            )
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        with (home / "prometheus.log").open("wb") as log:
            self._proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={home / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self._http = httpx.Client(base_url=self.url, timeout=_API_TIMEOUT_S)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise StackError(f"prometheus exited ({self._proc.returncode}): {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if self._client().get("/-/ready").status_code == 200:
                    return
            time.sleep(0.2)
        raise StackError(f"prometheus not ready in {_READY_TIMEOUT_S:.0f} s: {self.log_tail()}")

    def __exit__(self, *exc: object) -> None:
        if self._http is not None:
            self._http.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(_STOP_TIMEOUT_S)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)

    def _client(self) -> httpx.Client:
        if self._http is None:
            raise StackError("Prometheus is not running (use it in a with block)")
        return self._http

    def log_tail(self, chars: int = 600) -> str:
        if self._home is None or not (self._home / "prometheus.log").exists():
            return "(no log)"
        return (self._home / "prometheus.log").read_text(errors="replace")[-chars:]

    def _get(self, path: str, **params: str) -> Mapping[str, Any]:
        answer = self._client().get(path, params=params)
        body: Mapping[str, Any] = answer.json()
        return body

    def alerts(self) -> list[AlertState]:
        return parse_alerts(self._get("/api/v1/alerts"))

    def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        return parse_vector(self._get("/api/v1/query", query=promql))

    def rule_errors(self) -> list[str]:
        return rule_errors(self._get("/api/v1/rules", type="alert"))
