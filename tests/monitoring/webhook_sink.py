"""A webhook receiver on 127.0.0.1 standing where the Discord bot listens: it keeps every JSON
body Alertmanager posts to it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BOT_PATH = "/alertmanager"  # bot/webhook.py's route


class Sink:
    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with sink._lock:
                    sink.received.append({"path": self.path, **body})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}{BOT_PATH}"

    def bodies(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.received)

    def notifications(self, alertname: str, status: str) -> list[dict[str, Any]]:
        return [
            a
            for body in self.bodies()
            for a in body["alerts"]
            if a["labels"]["alertname"] == alertname and a["status"] == status
        ]


@contextmanager
def running_sink() -> Iterator[Sink]:
    sink = Sink()
    thread = threading.Thread(target=sink.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.server.shutdown()
        sink.server.server_close()
        thread.join(5)
