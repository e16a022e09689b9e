"""Pure text for /status (the health service's /api/v1/state) and /stats (the database)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.store import Stats

HEALTH_ICONS = {"healthy": "🟢", "degraded": "🟡", "broken": "🔴"}


def _ranges(blocks: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5"."""
    spans: list[list[int]] = []
    for block in sorted(blocks):
        if spans and block == spans[-1][1] + 1:
            spans[-1][1] = block
        else:
            spans.append([block, block])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def status_text(state: Mapping[str, Any]) -> str:
    """/status from a /api/v1/state body (see monitoring/state.py: SwarmState or NotReady)."""
    if "coverage" not in state:
        detail = state.get("detail") or "no reading of the swarm yet"
        return f"⚪ The health service has no reading of the swarm yet ({detail})."
    coverage = state["coverage"]
    health = str(coverage.get("health", "unknown"))
    blocks = int(state.get("num_blocks", 0))
    covered = int(coverage.get("covered_blocks", 0))
    servers = state.get("servers") or []
    online = [s for s in servers if s.get("state") == "online" and s.get("trusted")]
    lines = [
        f"{HEALTH_ICONS.get(health, '⚪')} **{state.get('model', '?')}**: {health} — "
        f"{covered}/{blocks} blocks served by {len(online)} trusted server(s) online"
    ]
    uncovered = coverage.get("uncovered_blocks") or []
    if uncovered:
        lines.append(f"• no server for block(s) {_ranges(list(uncovered))}: answers will fail")
    target = coverage.get("replication_target")
    if target and coverage.get("min_replication", target) < target and not uncovered:
        lines.append(
            f"• some blocks have {coverage['min_replication']} server(s), fewer than the "
            f"target {target}"
        )
    untrusted = state.get("untrusted_servers") or []
    if untrusted:
        lines.append(f"• {len(untrusted)} untrusted peer(s) announce blocks (not used)")
    probe = state.get("probe") or {}
    if probe.get("last_ttft_s") is not None:
        speed = probe.get("last_tokens_per_s")
        lines.append(
            f"• last probe: {probe['last_ttft_s']:.2f} s to first token"
            + (f", {speed:.1f} tokens/s" if speed is not None else "")
        )
    if probe.get("last_failure_reason"):
        lines.append(f"• last probe failure: {probe['last_failure_reason']}")
    refresh = state.get("refresh") or {}
    if refresh.get("fresh") is False:
        lines.append("• ⚠️ this reading is stale: the health service cannot read the swarm")
    return "\n".join(lines)


def stats_text(stats: Stats) -> str:
    if stats.answers == 0:
        return "No answers yet."
    lines = [
        f"**{stats.answers} answer(s)**, {stats.rated_answers} rated: "
        f"👍 {stats.up} · 👎 {stats.down}"
    ]
    for model in stats.per_model:
        speed = []
        if model.avg_ttft_s is not None:
            speed.append(f"{model.avg_ttft_s:.2f} s to first token")
        if model.avg_tokens_per_s is not None:
            speed.append(f"{model.avg_tokens_per_s:.1f} tokens/s")
        lines.append(
            f"• {model.model}: {model.answers} answer(s), 👍 {model.up} · 👎 {model.down}"
            + (f" · avg {', '.join(speed)}" if speed else "")
        )
    if stats.ab_preferences:
        ranked = sorted(stats.ab_preferences.items(), key=lambda kv: (kv[0] == "equal", -kv[1]))
        lines.append(
            "A/B (one vote per student and pair: the answer rated higher wins, a lone 👍 "
            "prefers its answer, a lone 👎 the other): "
            + ", ".join(
                f"{count} equal" if name == "equal" else f"{name} preferred {count}"
                for name, count in ranked
            )
        )
    return "\n".join(lines)
