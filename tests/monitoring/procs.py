"""Processes and servers the monitoring tests start, and polling instead of sleeping.

Every process is started in its own session so that teardown can end it and its children by its
own process group id; logs go to a file shown when a start fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import uvicorn

T = TypeVar("T")

DEPS_HINT = "install the monitoring test tools with: bash scripts/monitoring-deps.sh"


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found on PATH; {DEPS_HINT}", pytrace=False)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    on_timeout: Callable[[], str] | None = None,
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            details = f" (last error: {last_error!r})" if last_error else ""
            extra = f"\n{on_timeout()}" if on_timeout else ""
            pytest.fail(f"timed out after {timeout} s waiting for {what}{details}{extra}")
        time.sleep(interval)


class ManagedProcess:
    """A child process with a log file, ended (SIGTERM, then SIGKILL) by ``stop``."""

    def __init__(self, argv: Sequence[str], log_path: Path, cwd: Path | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {self.argv[0]} log ({self.log_path}) ---\n" + "\n".join(text)

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            pytest.fail(f"{self.argv[0]} exited with {self.proc.returncode}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@contextlib.contextmanager
def managed_process(
    argv: Sequence[str], log_path: Path, *, ready: Callable[[], bool], timeout: float = 30
) -> Iterator[ManagedProcess]:
    """Start ``argv``, wait until ``ready()``, yield it, and always reap it."""
    process = ManagedProcess(argv, log_path)
    try:

        def started() -> bool:
            process.check_running()
            return ready()

        wait_until(
            started, timeout=timeout, what=f"{argv[0]} to be ready", on_timeout=process.log_tail
        )
        yield process
    finally:
        process.stop()


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        return httpx.get(url, timeout=2).status_code == 200

    return check


@contextlib.contextmanager
def serve_in_thread(app: object, port: int | None = None) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on 127.0.0.1 (a thread of this process); yield its URL."""
    port = port or free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")  # type: ignore[arg-type]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=15, what="uvicorn to start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        if thread.is_alive():
            pytest.fail("uvicorn did not shut down within 15 s")
