"""/metrics in Prometheus' text format, through prometheus_client (its own registry, so
several servers in one process stay apart)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

if TYPE_CHECKING:
    from linly_engine.serve.scheduler import Request, Scheduler

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
RATE_BUCKETS = (1, 5, 10, 20, 40, 80, 160, 320)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("linly_requests", "Generations finished", ["finish_reason"], registry=r)
        self.rejected = Counter("linly_requests_rejected", "Requests refused because the queue was full", registry=r)
        self.prompt_tokens = Counter("linly_prompt_tokens", "Prompt tokens received", registry=r)
        self.cached_tokens = Counter("linly_prompt_tokens_cached", "Prompt tokens served from a slot's cache",
                                     registry=r)
        self.generated_tokens = Counter("linly_generated_tokens", "Tokens generated", registry=r)
        self.ttft = Histogram("linly_time_to_first_token_seconds", "From request to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.request_rate = Histogram("linly_request_tokens_per_second", "Generated tokens/s of each request",
                                      buckets=RATE_BUCKETS, registry=r)
        self.queue_depth = Gauge("linly_queue_depth", "Requests waiting for a slot", registry=r)
        self.busy_slots = Gauge("linly_busy_slots", "Slots generating", registry=r)
        self.decode_rate = Gauge("linly_decode_tokens_per_second", "Tokens/s over all slots in the last step",
                                 registry=r)

    def bind(self, scheduler: "Scheduler") -> None:
        """Gauges read the scheduler when scraped."""
        self.queue_depth.set_function(lambda: scheduler.queue_depth)
        self.busy_slots.set_function(lambda: scheduler.busy_slots)
        self.decode_rate.set_function(lambda: scheduler.counters.decode_tokens_per_s)

    def observe(self, req: "Request") -> None:
        """One finished generation."""
        self.requests.labels(req.finish_reason or "cancelled").inc()
        self.prompt_tokens.inc(len(req.prompt_ids))
        self.cached_tokens.inc(req.cached_tokens)
        self.generated_tokens.inc(req.generated)
        if req.first_token_at is not None:
            self.ttft.observe(req.first_token_at - req.submitted)
            if req.finished_at and req.generated > 1 and req.finished_at > req.first_token_at:
                self.request_rate.observe((req.generated - 1) / (req.finished_at - req.first_token_at))

    def render(self) -> bytes:
        return generate_latest(self.registry)
