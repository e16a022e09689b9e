"""The gateway's Prometheus metrics, on a registry of its own (one per app, readable in tests).

Labels are bounded: ``route`` is a route template, ``code`` an HTTP status, ``reason`` one of
the stop reasons, ``kind`` an error class of ours, ``token`` the NAME of a bearer token from
the admin's tokens file (a set the admin controls; never the token itself, prompts, or a
client-chosen string such as OpenAI's ``user``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from client.streams import StreamStats

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
SPEED_BUCKETS = (0.5, 1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250)


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "petals_gateway_requests_total",
            "HTTP requests and WebSocket messages answered",
            ["route", "code"],
            registry=r,
        )
        self.errors = Counter(
            "petals_gateway_errors_total",
            "requests that failed, by kind",
            ["route", "kind"],
            registry=r,
        )
        self.ttft = Histogram(
            "petals_gateway_time_to_first_token_seconds",
            "seconds from accepting a generation to its first token",
            ["route"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.speed = Histogram(
            "petals_gateway_tokens_per_second",
            "decoding speed of a generation after its first token",
            ["route"],
            buckets=SPEED_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "petals_gateway_generated_tokens_total", "tokens generated", ["route"], registry=r
        )
        self.stops = Counter(
            "petals_gateway_generations_total",
            "finished generations by stop reason",
            ["route", "reason"],
            registry=r,
        )
        self.active = Gauge(
            "petals_gateway_active_generations",
            "generations running now",
            ["route"],
            registry=r,
        )

        self.token_requests = Counter(
            "petals_gateway_token_requests_total",
            "generations started, per bearer token name",
            ["token"],
            registry=r,
        )
        self.token_prompt_tokens = Counter(
            "petals_gateway_token_prompt_tokens_total",
            "prompt tokens sent to the swarm, per bearer token name",
            ["token"],
            registry=r,
        )
        self.token_completion_tokens = Counter(
            "petals_gateway_token_completion_tokens_total",
            "tokens generated, per bearer token name",
            ["token"],
            registry=r,
        )
        self.queued = Gauge(
            "petals_gateway_queued_generations",
            "generations admitted and not finished (running or waiting for a client slot)",
            registry=r,
        )

    def observe(self, route: str, stats: StreamStats) -> None:
        self.stops.labels(route, stats.stop_reason).inc()
        self.tokens.labels(route).inc(stats.completion_tokens)
        if stats.time_to_first_token_s is not None:
            self.ttft.labels(route).observe(stats.time_to_first_token_s)
        if stats.tokens_per_second is not None:
            self.speed.labels(route).observe(stats.tokens_per_second)

    def render(self) -> bytes:
        return generate_latest(self.registry)
