"""The bot's Prometheus metrics on its own registry (tests read samples directly; two bots in one
process do not collide). Labels are bounded: question kind, model, outcome, never users or text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

TTFT_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120)
SPEED_BUCKETS = (0.5, 1, 2, 4, 8, 16, 32, 64, 128)


class BotMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.questions = Counter(
            "petals_bot_questions_total",
            "Questions the bot accepted, by how they were asked",
            ["kind"],  # prefix | slash | reply | thread | mention
            registry=r,
        )
        self.rejected = Counter(
            "petals_bot_questions_rejected_total",
            "Questions refused before reaching the swarm",
            ["reason"],  # empty | too_long | rate_limited | queue_full
            registry=r,
        )
        self.answers = Counter(
            "petals_bot_answers_total",
            "Answers finished, by why generation stopped",
            ["model", "stopped_by"],
            registry=r,
        )
        self.errors = Counter(
            "petals_bot_errors_total",
            "Answers that failed",
            ["reason"],  # swarm_unavailable | timeout | error | internal | discord
            registry=r,
        )
        self.ttft = Histogram(
            "petals_bot_time_to_first_token_seconds",
            "Seconds from sending a prompt to the first generated token",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.speed = Histogram(
            "petals_bot_generation_tokens_per_second",
            "Decoding speed of one answer after its first token",
            ["model"],
            buckets=SPEED_BUCKETS,
            registry=r,
        )
        self.queue_length = Gauge(
            "petals_bot_queue_length", "Questions waiting for a generation slot", registry=r
        )
        self.running = Gauge(
            "petals_bot_generations_running", "Generations running on the swarm", registry=r
        )
        self.ratings = Counter(
            "petals_bot_ratings_total",
            "Ratings stored durably (acknowledged), by rating",
            ["rating"],  # up | down | removed
            registry=r,
        )
        self.cancelled = Counter(
            "petals_bot_cancellations_total",
            "Answers cancelled by /stop, /breakall or a timeout",
            ["reason"],  # stop | breakall | timeout | shutdown
            registry=r,
        )
        self.alerts = Counter(
            "petals_bot_alerts_received_total",
            "Alerts received from Alertmanager",
            ["status"],  # firing | resolved
            registry=r,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """One sample's current value (0 when absent), for tests and /healthz."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found
