"""Scrape a ``/metrics`` page and answer what the specification's Grafana queries need."""

from __future__ import annotations

import math
import re
import urllib.request
from collections import defaultdict

from tests.support.events import wait_until


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of the page by sample name: ``{name: [(labels, value), ...]}``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - local test URL
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), sample.value))
    return samples


def total(samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s series whose labels include ``labels`` (``sum(...)``)."""
    return sum(v for lab, v in samples.get(name, ())
               if all(lab.get(k) == want for k, want in labels.items()))


def by(samples, name: str, label: str) -> dict[str, float]:
    """``sum(name) by (label)``."""
    out: dict[str, float] = defaultdict(float)
    for lab, v in samples.get(name, ()):
        out[lab[label]] += v
    return dict(out)


def histogram_quantile(q: float, samples, name: str, **labels: str) -> float:
    """PromQL's ``histogram_quantile(q, sum(name_bucket) by (le))``: linear interpolation
    within the bucket holding the q-th observation."""
    buckets: dict[float, float] = defaultdict(float)
    for lab, v in samples.get(f"{name}_bucket", ()):
        if all(lab.get(k) == want for k, want in labels.items()):
            buckets[float(lab["le"])] += v
    bounds = sorted(buckets)
    assert bounds and math.isinf(bounds[-1]), f"no +Inf bucket in {name}"
    count = buckets[bounds[-1]]
    assert count > 0, f"{name} observed nothing"
    rank = q * count
    lower, below = 0.0, 0.0
    for upper in bounds:
        if buckets[upper] >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / max(buckets[upper] - below, 1e-9)
        lower, below = upper, buckets[upper]
    return lower


def metrics_url(log_text_fn, timeout: float = 30.0) -> str:
    """The URL a worker logged it serves its metrics on."""
    found: list[str] = []

    def logged() -> bool:
        m = re.search(r"metrics (?:served )?on (http://[0-9.]+:\d+/metrics)", log_text_fn())
        if m:
            found.append(m.group(1))
        return bool(m)

    wait_until(logged, timeout=timeout, message="the metrics URL in the log")
    return found[0]
