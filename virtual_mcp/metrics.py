"""The gateway's Prometheus metrics, one registry per gateway (several gateways can share a process, as in tests).

Label values come from the configuration (endpoints, servers, tools the backends declared) or from small fixed sets,
never from what a caller sends: a refused call to a name nobody declared counts under tool `(unknown)`. No label or
value ever holds a credential.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

# Seconds: from 50 us (a warm credential lookup) to 30 s (a slow tool).
BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST
UNKNOWN = "(unknown)"


class _Gauges(Collector):
    """Values read when scraped (open upstream sessions, audit queue depth): no bookkeeping on the hot path."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, Callable[[], Mapping[tuple[str, ...], float]], tuple[str, ...]]] = {}

    def collect(self) -> Iterator[Metric]:
        for name, (doc, read, labels) in self.sources.items():
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in read().items():
                family.add_metric(list(values), value)
            yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tool_calls = Counter(
            "vmcp_tool_calls_total",
            "tools/call requests by endpoint, server, tool and outcome (allowed, denied, failed)",
            ["endpoint", "server", "tool", "outcome"],
            registry=r,
        )
        self.tool_call_seconds = Histogram(
            "vmcp_tool_call_duration_seconds",
            "tools/call latency at the gateway, by server",
            ["server"],
            buckets=BUCKETS,
            registry=r,
        )
        self.http_requests = Counter(
            "vmcp_http_requests_total",
            "HTTP requests to the MCP endpoints, by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.phase_seconds = Histogram(
            "vmcp_phase_duration_seconds",
            "time per request in each gateway phase (auth, policy, token_lookup, token_lock_wait, token_provider, "
            "vault, upstream) and in total",
            ["phase"],
            buckets=BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "vmcp_upstream_errors_total",
            "calls a backend or its credential could not complete, by server and kind",
            ["server", "kind"],
            registry=r,
        )
        self.upstream_invalid_entries = Counter(
            "vmcp_upstream_invalid_entries_total",
            "entries of backend lists left out (invalid, a duplicate name, past the list's bounds), by server and "
            "kind (tool, resource, resource_template, prompt)",
            ["server", "kind"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "vmcp_token_refreshes_total",
            "upstream OAuth token requests by grant kind (2lo, 3lo) and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.cache_lookups = Counter(
            "vmcp_cache_lookups_total",
            "cache lookups by cache (token, catalog) and result (hit, miss)",
            ["cache", "result"],
            registry=r,
        )
        self._gauges = _Gauges()
        r.register(self._gauges)
        # Label sets come from the configuration and fixed vocabularies (see the module's docstring): bounded.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def gauge(
        self, name: str, doc: str, read: Callable[[], Mapping[tuple[str, ...], float]], labels: tuple[str, ...] = ()
    ) -> None:
        """A gauge whose values `read()` gives at scrape time, keyed by label values."""
        self._gauges.sources[name] = (doc, read, labels)

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, looked up once: the hot path then costs a dict lookup, not a label walk."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe_phases(self, phases: Mapping[str, float], total: float) -> None:
        for name, seconds in phases.items():
            self.child(self.phase_seconds, name).observe(seconds)
        self.child(self.phase_seconds, "total").observe(total)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
