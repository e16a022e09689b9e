"""Per-token usage read back from a gateway's /metrics (for `petalctl gateway usage`)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

_FIELDS = {
    "petals_gateway_token_requests_total": "requests",
    "petals_gateway_token_prompt_tokens_total": "prompt_tokens",
    "petals_gateway_token_completion_tokens_total": "completion_tokens",
}


@dataclass
class TokenUsage:
    token: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


def parse_usage(exposition: str) -> list[TokenUsage]:
    """Usage per bearer token name since the gateway started, most requests first."""
    rows: dict[str, TokenUsage] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            field = _FIELDS.get(sample.name)
            if field is None:
                continue
            name = sample.labels.get("token", "")
            row = rows.setdefault(name, TokenUsage(name))
            setattr(row, field, int(sample.value))
    return sorted(rows.values(), key=lambda r: (-r.requests, r.token))


def format_usage(rows: list[TokenUsage]) -> str:
    header = ("token", "requests", "prompt tokens", "completion tokens")
    table = [header] + [
        (r.token, str(r.requests), str(r.prompt_tokens), str(r.completion_tokens)) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in table
    ]
    return "\n".join(lines) if rows else "no generations yet"
