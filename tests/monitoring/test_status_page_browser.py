"""The status page in headless Chromium: every block is drawn, each server's reachability strip is
drawn and labelled in words, the script runs and refreshes the page from the service, and
screenshots (desktop and phone) are kept under artifacts/monitoring/."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import CHROMIUM_FLAGS
from tests.monitoring.conftest import ARTIFACTS
from tests.monitoring.procs import require_binary
from tests.monitoring.synthetic import LLAMA_70B_BLOCKS, peer, server, snapshot

pytestmark = pytest.mark.monitoring


def llama_70b_swarm():
    """80 blocks: 0-29 doubly served, 30-59 once, 60-69 by nobody trusted, 70-79 once."""
    return snapshot(
        server("gorina7-gpu0", 0, 30, throughput=812.4, cache_tokens_left=131072),
        server("gorina7-gpu1", 0, 30, throughput=790.0, cache_tokens_left=98304),
        server("gorina7-gpu2", 30, 60, throughput=655.1, using_relay=True),
        server("gorina8-gpu0", 60, 70, state="joining", cache_tokens_left=None),
        server("gorina8-gpu1", 70, 80, throughput=701.9),
        server("mallory", 60, 80, trusted=False, public_name="free-gpu-4u"),
        num_blocks=LLAMA_70B_BLOCKS,
        replication_target=2,
        trusted=tuple(peer(n) for n in ("gorina7-gpu0", "gorina7-gpu1", "gorina7-gpu2",
                                        "gorina8-gpu0", "gorina8-gpu1", "gorina9-gpu0")),
    )  # fmt: skip


def expected_status(block: int) -> str:
    if block < 30:
        return "ok"
    return "uncovered" if 60 <= block < 70 else "under_replicated"


class BlockCells(HTMLParser):
    """Collects the block map's cells: data-block -> (classes, text), and the history strips'
    rows: data-key -> the strip's label, the row's latest state, its squares' classes and titles."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[int, dict[str, Any]] = {}
        self.strips: dict[str, dict[str, Any]] = {}
        self.body_classes: set[str] = set()
        self._current: int | None = None
        self._strip: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "body":
            self.body_classes = set((attributes.get("class") or "").split())
        if tag == "tr" and "history-row" in (attributes.get("class") or ""):
            self._strip = attributes.get("data-key") or ""
            self.strips[self._strip] = {"now": attributes.get("data-now"), "marks": []}
        if self._strip is not None and tag == "ol":
            self.strips[self._strip]["label"] = attributes.get("aria-label") or ""
        if self._strip is not None and tag == "li":
            mark = (attributes.get("class") or "", attributes.get("title") or "")
            self.strips[self._strip]["marks"].append(mark)
        if tag == "li" and attributes.get("data-block") is not None:
            self._current = int(attributes["data-block"] or "")
            self.cells[self._current] = {
                "classes": set((attributes.get("class") or "").split()),
                "title": attributes.get("title") or "",
                "text": [],
            }

    def handle_endtag(self, tag: str) -> None:
        if tag == "li":
            self._current = None
        if tag == "tr":
            self._strip = None

    def handle_data(self, data: str) -> None:
        if self._current is not None and data.strip():
            self.cells[self._current]["text"].append(data.strip())


def chromium(tmp_path: Path, *args: str) -> str:
    """Run headless Chromium to completion (its whole process group is ended on timeout)."""
    argv = [
        require_binary("chromium"),
        *CHROMIUM_FLAGS,
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *args,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("chromium did not finish within 120 s")
    assert proc.returncode == 0, err[-3000:]
    return out


class PathRecorder:
    """ASGI wrapper that records the paths the browser requested."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])
        await self.app(scope, receive, send)


def test_status_page_renders_every_block_and_refreshes_itself(start_service, tmp_path: Path):
    recorder: list[PathRecorder] = []

    def wrap(app: Any) -> PathRecorder:
        recorder.append(PathRecorder(app))
        return recorder[0]

    # Room for every read of the test (5 a second), so the strips keep their first marks.
    service = start_service(llama_70b_swarm(), page_refresh_s=1, wrap=wrap, history_points=1000)
    service.metrics.observe_probe(ttft_s=0.9, tokens_per_s=11.3)
    # The untrusted peer now announces itself offline (coverage counts only trusted servers).
    intruder_left = llama_70b_swarm().model_copy(
        update={
            "servers": tuple(
                s.model_copy(update={"state": "offline"}) if s.public_name == "free-gpu-4u" else s
                for s in llama_70b_swarm().servers
            )
        }
    )
    service.fetch.set(intruder_left)
    service.wait_for(intruder_left)

    dom = chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", f"{service.url}/")

    page = BlockCells()
    page.feed(dom)
    assert sorted(page.cells) == list(range(LLAMA_70B_BLOCKS))
    for block, cell in page.cells.items():
        assert expected_status(block) in cell["classes"], (block, cell["classes"])
        count = 2 if block < 30 else (0 if 60 <= block < 70 else 1)
        assert cell["text"] == [str(block), str(count)], (block, cell["text"])
    assert "free-gpu-4u" in page.cells[65]["title"] and "UNTRUSTED" in page.cells[65]["title"]
    assert "gorina7-gpu0" in page.cells[0]["title"]
    assert "live" in page.body_classes, "the page script did not run"
    assert "offline" not in page.body_classes
    assert "/partials/status" in recorder[0].paths, "the page did not refresh itself"
    assert "free-gpu-4u" in dom and "70/80" in dom

    # Reachability strips: one row per server seen, squares for the reads so far, in words too.
    seen = {s.peer_id for s in llama_70b_swarm().servers}
    assert set(page.strips) >= seen, "a strip per server (and the never-seen peer has none)"
    assert peer("gorina9-gpu0") not in page.strips
    strip = page.strips[peer("gorina7-gpu0")]
    assert strip["now"] == "online" and strip["marks"], strip
    assert all(cls == "mark online" and ": online" in title for cls, title in strip["marks"])
    assert strip["label"].startswith(f"gorina7-gpu0 ({peer('gorina7-gpu0')}): last ")
    assert strip["label"].endswith("online; now online")
    joining = page.strips[peer("gorina8-gpu0")]
    assert joining["now"] == "joining" and {c for c, _ in joining["marks"]} == {"mark joining"}
    intruder = page.strips[peer("mallory")]
    classes = [c for c, _ in intruder["marks"]]
    assert classes[0] == "mark online" and classes[-1] == "mark offline", classes
    assert intruder["now"] == "offline" and "; now offline" in intruder["label"]


@pytest.mark.parametrize(
    ("name", "size"), [("status-page-desktop", "1280,1400"), ("status-page-phone", "412,1600")]
)
def test_status_page_screenshots(start_service, tmp_path: Path, name: str, size: str):
    service = start_service(llama_70b_swarm())
    service.metrics.observe_probe(ttft_s=0.9, tokens_per_s=11.3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    png = ARTIFACTS / f"{name}.png"
    png.unlink(missing_ok=True)

    chromium(
        tmp_path,
        f"--window-size={size}",
        "--virtual-time-budget=2000",
        f"--screenshot={png}",
        f"{service.url}/",
    )

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000  # a real page, not a blank one
