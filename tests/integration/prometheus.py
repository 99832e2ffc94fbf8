"""Reading the stack's Prometheus endpoint (Ray's metrics agent) in integration tests."""

from __future__ import annotations

from typing import Any

from cluster.stack import Stack

Sample = tuple[str, dict[str, str], float]


def scrape(stack: Stack) -> list[Sample]:
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    url = f"http://127.0.0.1:{stack.settings.ray.metrics_export_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("ray_freshline_")
    ]


def series(samples: list[Sample], name: str, **labels: str) -> dict[frozenset[Any], float]:
    """Every series of ``name`` with the given labels, by its full label set (Ray adds a label
    per worker process)."""
    names = {f"ray_{name}", f"ray_{name}_total"}
    return {
        frozenset(tags.items()): value
        for sample, tags, value in samples
        if sample in names and all(tags.get(k) == v for k, v in labels.items())
    }


def total(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(series(samples, name, **labels).values())


def growth(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float:
    """How much the live series grew. A dead worker's series leaves the scrape a while after
    the worker died (Ray drops stale components), and a dead worker counts nothing new, so
    only the series present in ``after`` count, from their value in ``before`` (or zero)."""
    old = series(before, name, **labels)
    return sum(v - old.get(k, 0.0) for k, v in series(after, name, **labels).items())
