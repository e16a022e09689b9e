"""Render the status page from the same state /api/v1/state returns (pure: state in, HTML out).

The whole page works without JavaScript; the small inline script only swaps in a fresh
``status_fragment`` every few seconds.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import string
import time
from collections import Counter
from collections.abc import Sequence

from monitoring.state import (
    BlockState,
    BootstrapHistoryMark,
    HistoryState,
    NotReady,
    RefreshState,
    ServerHistoryMark,
    ServerRow,
    SwarmState,
)

_STATE_SUMMARY = {
    "uncovered": "no trusted online server",
    "under_replicated": "below the replication target",
    "ok": "at or above the replication target",
}


@functools.cache
def _asset(name: str) -> str:
    return importlib.resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def short_peer(peer_id: str) -> str:
    """PeerIDs all start alike (12D3KooW...): the tail tells them apart."""
    return peer_id if len(peer_id) <= 10 else "…" + peer_id[-8:]


def _number(value: float | int | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def _yes_no(value: bool | None) -> str:
    return "–" if value is None else ("yes" if value else "no")


def _stat(value: str, label: str, tone: str = "") -> str:
    return (
        f'<div class="stat {tone}"><span class="value">{value}</span>'
        f'<span class="label">{label}</span></div>'
    )


def _age(refresh: RefreshState) -> str:
    if refresh.age_s is None:
        return '<span id="refresh-age" data-age="">never</span>'
    return f'<span id="refresh-age" data-age="{refresh.age_s:.1f}">{round(refresh.age_s)} s</span>'


def _refresh_stat(refresh: RefreshState) -> str:
    tone = "good" if refresh.fresh and refresh.ok else "bad"
    label = f"since the last DHT read · {refresh.errors_total} errors"
    return _stat(_age(refresh) + " ago", label, tone)


def _summary(state: SwarmState) -> str:
    cov = state.coverage
    trusted = [s for s in state.servers if s.trusted]
    online = sum(1 for s in trusted if s.state == "online")
    expected = max(online + len(state.trusted_missing), len(trusted))
    probe = state.probe
    probe_value = (
        f"{probe.last_ttft_s:.1f} s · {probe.last_tokens_per_s:.1f} tok/s"
        if probe.last_ttft_s is not None and probe.last_tokens_per_s is not None
        else "–"
    )
    probe_label = f"probe: first token · speed ({probe.failures_total}/{probe.runs_total} failed)"
    stats = [
        _stat(
            f"{cov.covered_blocks}/{state.num_blocks}",
            f"blocks covered ({cov.ratio:.0%})",
            "good" if cov.ratio == 1 else "bad",
        ),
        _stat(
            f"{cov.min_replication} / {cov.replication_target}",
            "min servers per block / target",
            "bad"
            if cov.min_replication == 0
            else ("warn" if cov.min_replication < cov.replication_target else "good"),
        ),
        _stat(
            f"{online}/{expected}",
            "trusted servers online",
            "good" if not state.trusted_missing else "warn",
        ),
        _stat(
            str(len(state.untrusted_servers)),
            "untrusted peers announcing",
            "bad" if state.untrusted_servers else "good",
        ),
        _refresh_stat(state.refresh),
        _stat(probe_value, probe_label),
    ]
    return f'<section class="summary health-{cov.health}">{"".join(stats)}</section>'


def _block_cell(block: BlockState) -> str:
    lines = [
        f"Block {block.index}: {block.replication} trusted online ({_STATE_SUMMARY[block.status]})"
    ]
    lines += [
        f"{s.public_name or short_peer(s.peer_id)} ({s.peer_id}) {s.state}"
        + ("" if s.trusted else " UNTRUSTED")
        for s in block.servers
    ]
    return (
        f'<li class="block {block.status}" data-block="{block.index}" '
        f'data-replication="{block.replication}" title="{_e(chr(10).join(lines))}">'
        f'<span class="index">{block.index}</span>'
        f'<span class="count">{block.replication}</span></li>'
    )


def _block_map(state: SwarmState) -> str:
    target = state.coverage.replication_target
    legend = (
        '<div class="legend">'
        '<span><span class="swatch uncovered"></span>0 servers</span>'
        f'<span><span class="swatch under_replicated"></span>below target ({target})</span>'
        '<span><span class="swatch ok"></span>at target</span>'
        "<span>cell: block number, trusted online servers</span></div>"
    )
    cells = "".join(_block_cell(block) for block in state.blocks)
    return (
        f"<section><h2>Blocks ({state.num_blocks})</h2>{legend}"
        f'<ol class="blocks">{cells}</ol></section>'
    )


def _problems(state: SwarmState) -> str:
    parts = []
    if state.untrusted_servers:
        items = "".join(
            f"<li><strong>{_e(s.public_name or 'unnamed')}</strong> <code>{_e(s.peer_id)}</code> "
            f"announces blocks {s.start_block}–{s.end_block - 1} ({s.state})</li>"
            for s in state.untrusted_servers
        )
        parts.append(
            '<section class="problems bad"><h2>Untrusted peers announcing our blocks</h2>'
            f"<ul>{items}</ul></section>"
        )
    if state.trusted_missing:
        items = "".join(
            f"<li>{f'<strong>{_e(m.public_name)}</strong> ' if m.public_name else ''}"
            f"<code>{_e(m.peer_id)}</code> — {_e(m.state or 'absent from the DHT')}</li>"
            for m in state.trusted_missing
        )
        parts.append(
            '<section class="problems warn"><h2>Trusted servers not online</h2>'
            f"<ul>{items}</ul></section>"
        )
    if not state.refresh.ok and state.refresh.last_error:
        parts.append(
            '<section class="problems bad"><h2>Last DHT read failed</h2>'
            f"<p>{_e(state.refresh.last_error)}</p></section>"
        )
    return "".join(parts)


def _server_row(server: ServerRow) -> str:
    blocks = f"{server.start_block}–{server.end_block - 1}"
    return (
        f'<tr class="{"trusted" if server.trusted else "untrusted"}">'
        f"<td>{_e(server.public_name or '–')}</td>"
        f'<td><code title="{_e(server.peer_id)}">{_e(short_peer(server.peer_id))}</code></td>'
        f"<td>{blocks}</td>"
        f'<td><span class="state {server.state}">{server.state}</span></td>'
        f'<td class="num">{_number(server.throughput)}</td>'
        f'<td class="num">{_number(server.cache_tokens_left)}</td>'
        f"<td>{_yes_no(server.trusted)}</td>"
        f"<td>{_yes_no(server.using_relay)}</td>"
        f"<td>{_e(server.version or '–')}</td>"
        "</tr>"
    )


def _server_table(state: SwarmState) -> str:
    head = "".join(
        f"<th>{h}</th>"
        for h in (
            "Name",
            "PeerID",
            "Blocks",
            "State",
            "Throughput (RPS)",
            "Cache left (tokens)",
            "Trusted",
            "Relay",
            "Version",
        )
    )
    rows = "".join(_server_row(s) for s in state.servers) or (
        '<tr><td colspan="9">No server announces this model.</td></tr>'
    )
    return (
        f'<section><h2>Servers ({len(state.servers)})</h2><div class="table-wrap"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div></section>"
    )


_SERVER_MARKS = (
    ("online", "online, answered the ping"),
    ("joining", "joining (loading blocks)"),
    ("unreachable", "announced online, no answer to the ping"),
    ("offline", "announced offline"),
    ("absent", "no record in the DHT"),
    ("unknown", "the read failed"),
)
_BOOTSTRAP_MARKS = (
    ("reachable", "answered the DHT ping"),
    ("unreachable", "no answer"),
    ("unknown", "the read failed"),
)
HistoryMark = ServerHistoryMark | BootstrapHistoryMark


def _clock(at: float) -> str:
    return time.strftime("%H:%M:%S UTC", time.gmtime(at))


def _mark_text(mark: HistoryMark) -> str:
    rtt = f", {mark.rtt_s * 1000:.0f} ms" if mark.rtt_s is not None else ""
    return f"{_clock(mark.at)}: {mark.state}{rtt}"


def _strip_row(name: str, heading: str, key: str, marks: Sequence[HistoryMark]) -> str:
    """One row of squares, oldest left; the row's label (``name``, plain text) and each square's
    title say in words what the colours say. ``heading`` is the row's HTML heading."""
    counts = Counter(m.state for m in marks)
    now = marks[-1].state if marks else "unknown"
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    label = f"{name}: last {len(marks)} reads: {summary}; now {now}"
    squares = "".join(
        f'<li class="mark {m.state}" title="{_e(_mark_text(m))}"></li>' for m in marks
    )
    return (
        f'<tr class="history-row" data-key="{_e(key)}" data-now="{_e(now)}">'
        f'<th scope="row">{heading}</th>'
        f'<td><ol class="strip" role="img" aria-label="{_e(label)}" title="{_e(label)}">'
        f"{squares}</ol></td>"
        f'<td><span class="state {_e(now)}">{_e(now)}</span></td></tr>'
    )


def _history_legend(meanings: Sequence[tuple[str, str]]) -> str:
    items = "".join(
        f'<span><span class="swatch mark {state}"></span>{state}: {_e(meaning)}</span>'
        for state, meaning in meanings
    )
    return f'<div class="legend">{items}<span>oldest left, newest right</span></div>'


def _server_history(history: HistoryState) -> str:
    if not history.servers:
        return ""
    rows = "".join(
        _strip_row(
            f"{t.public_name or 'unnamed'} ({t.peer_id})",
            f'{_e(t.public_name or "unnamed")} <code title="{_e(t.peer_id)}">'
            f"{_e(short_peer(t.peer_id))}</code>" + ("" if t.trusted else " (untrusted)"),
            t.peer_id,
            t.marks,
        )
        for t in history.servers
    )
    return _history_section("server-history", "Servers", history.points, _SERVER_MARKS, rows)


def _bootstrap_history(history: HistoryState) -> str:
    if not history.bootstraps:
        return ""
    rows = "".join(
        _strip_row(
            f"bootstrap {b.address}",
            f'<code title="{_e(b.address)}">{_e(short_peer(b.peer_id))}</code>',
            b.peer_id,
            b.marks,
        )
        for b in history.bootstraps
    )
    return _history_section(
        "bootstrap-history", "Bootstrap peers", history.points, _BOOTSTRAP_MARKS, rows
    )


def _history_section(
    section_id: str, title: str, points: int, marks: Sequence[tuple[str, str]], rows: str
) -> str:
    return (
        f'<section class="history" id="{section_id}"><h2>{title} over the last '
        f"{points} reads</h2>{_history_legend(marks)}"
        f'<div class="table-wrap"><table class="strips"><tbody>{rows}</tbody></table></div>'
        "</section>"
    )


def status_fragment(state: SwarmState | NotReady) -> str:
    """The part of the page the script replaces on every update."""
    if isinstance(state, NotReady):
        error = (
            f"<p>Last attempt failed: {_e(state.refresh.last_error)}</p>"
            if state.refresh.last_error
            else ""
        )
        return (
            '<section class="summary health-broken">'
            f"<div><h2>Waiting for the first read of the swarm's DHT</h2>{error}</div>"
            f"{_refresh_stat(state.refresh)}</section>" + _bootstrap_history(state.history)
        )
    return (
        _summary(state)
        + _problems(state)
        + _block_map(state)
        + _server_table(state)
        + _server_history(state.history)
        + _bootstrap_history(state.history)
    )


def page(state: SwarmState | NotReady, *, version: str, refresh_ms: int) -> str:
    """The whole status page."""
    if isinstance(state, SwarmState):
        subtitle = f"{_e(state.model)} · DHT prefix {_e(state.dht_prefix)}"
        title = f"{state.coverage.health} · {state.model} · Petals swarm health"
    else:
        subtitle = "no snapshot yet"
        title = "waiting · Petals swarm health"
    return string.Template(_asset("page.html")).substitute(
        title=_e(title),
        subtitle=subtitle,
        status=status_fragment(state),
        style=_asset("page.css"),
        script=_asset("page.js"),
        refresh_ms=refresh_ms,
        version=_e(version),
    )
