"""Scraping the /metrics endpoint a test started (`postwarden run` serves it
from a child process that may still be starting)."""

from __future__ import annotations

import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, wait: float = 30.0) -> Samples:
    """Every sample on 127.0.0.1:`port`/metrics by (name, sorted labels);
    waits up to `wait` seconds for the endpoint to answer (bounds a hung
    test only)."""
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))
