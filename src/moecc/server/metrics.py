"""The server's Prometheus metrics (prometheus-client), in a registry of their own per server."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.running = Gauge("moecc_requests_running", "Requests being decoded or prefilled", registry=r)
        self.queued = Gauge("moecc_requests_queued", "Requests waiting for a slot", registry=r)
        self.slots_busy = Gauge("moecc_slots_busy", "Slots holding a running request", registry=r)
        self.finished = Counter("moecc_requests", "Requests ended, by finish reason (stop, length, context; "
                                "cancelled: the client went away; error)", ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("moecc_prompt_tokens", "Prompt tokens of admitted requests", registry=r)
        self.generated_tokens = Counter("moecc_generated_tokens", "Tokens generated", registry=r)
        self.time_to_first_token = Histogram("moecc_time_to_first_token_seconds",
                                             "From a request's arrival to its first token",
                                             buckets=_LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram("moecc_time_per_output_token_seconds",
                                               "Decode time per token after the first, per request",
                                               buckets=_LATENCY_BUCKETS, registry=r)

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric."""
        return generate_latest(self.registry)
