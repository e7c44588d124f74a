"""Reading Prometheus text: a node's, a gateway's or etcd's ``/metrics``, parsed into samples."""
from __future__ import annotations

from typing import Dict, FrozenSet, Optional, Tuple

from prometheus_client.parser import text_string_to_metric_families

from .wire import http_request

__all__ = ["scrape_metrics", "sample"]

Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]


def scrape_metrics(address: str, path: str = "/metrics", timeout: float = 20.0) -> Samples:
    """``{(sample name, frozenset(label items)): value}`` from ``http://address/metrics``.
    AssertionError unless it answers 200 with Prometheus text."""
    status, headers, body = http_request(address, "GET", path, timeout=timeout)
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), (status, headers)
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(values: Samples, name: str, **labels: str) -> Optional[float]:
    """The value of sample ``name`` with exactly these labels (none: the unlabelled one), or
    None when there is no such sample."""
    return values.get((name, frozenset(labels.items())))
