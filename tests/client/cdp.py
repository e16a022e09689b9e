"""A headless Chromium driven over the DevTools protocol (its WebSocket), for the web chat test.

Chromium comes from apt (scripts/monitoring-deps.sh installs it). ``--remote-debugging-port=0``
makes it pick a free port and write it to DevToolsActivePort in its profile directory.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from tests.chromium import CHROMIUM_FLAGS
from tests.client.conftest import poll

FLAGS = [*CHROMIUM_FLAGS, "--remote-debugging-port=0", "--remote-allow-origins=*"]


class Browser:
    def __init__(self, profile: Path, width: int = 1100, height: int = 800) -> None:
        self.profile = profile
        self.proc = subprocess.Popen(
            ["chromium", *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        active = profile / "DevToolsActivePort"
        poll(lambda: active.exists() and active.read_text().strip(), 60, "chromium to start")
        port = active.read_text().split()[0]
        pages = poll(
            lambda: [
                p
                for p in httpx.get(f"http://127.0.0.1:{port}/json/list").json()
                if p["type"] == "page"
            ],
            30,
            "chromium's first page",
        )
        self._ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=30)
        self.ws = self._ws.__enter__()
        self._ids = itertools.count(1)
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=60))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def eval(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        poll(lambda: self.eval("document.readyState") == "complete", 30, f"{url} to load")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", format="png")["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.__exit__(None, None, None)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
