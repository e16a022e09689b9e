"""`petalctl generate` and `petalctl chat` as a user runs them, against the loopback swarm."""

from __future__ import annotations

import codecs
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time

import pytest

from client import GenerationParams, SwarmClient
from swarm.localswarm import LocalSwarm
from tests.stacks import run_showing_stacks

pytestmark = pytest.mark.swarm


def swarm_flags(swarm: LocalSwarm, trusted: list[str] | None = None) -> list[str]:
    return [
        "--model",
        swarm.model,
        "--dht-prefix",
        swarm.dht_prefix,
        "--initial-peers",
        *swarm.initial_peers,
        "--trusted-servers",
        *(trusted or swarm.trusted_peer_ids),
    ]


def petalctl(*args: str, timeout: float = 180, **kwargs: object) -> subprocess.CompletedProcess:
    return run_showing_stacks(
        [sys.executable, "-m", "petalctl.main", *args], timeout=timeout, **kwargs
    )


def test_generate_prints_only_the_answer(local_swarm: LocalSwarm, swarm_client: SwarmClient):
    question = "What is a block?"
    expected = swarm_client.generate(
        [{"role": "user", "content": question}], GenerationParams(max_new_tokens=20)
    ).text
    done = petalctl(
        "generate",
        *swarm_flags(local_swarm),
        "--prompt",
        question,
        "--max-new-tokens",
        "20",
        "--stats",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected + "\n"
    assert "tokens/s" in done.stderr


def test_generate_exit_codes(local_swarm: LocalSwarm, tmp_path):
    bad = petalctl("generate", *swarm_flags(local_swarm), "--prompt", "hi", "--temperature", "5")
    assert bad.returncode == 2 and "temperature" in bad.stderr and bad.stdout == ""
    no_peers = petalctl(
        "generate",
        "--model",
        local_swarm.model,
        "--prompt",
        "hi",
        cwd=tmp_path,
        env={**os.environ, "PETALS_INITIAL_PEERS": ""},
    )
    assert no_peers.returncode == 2 and "bootstrap" in no_peers.stderr
    # A trusted list naming a peer that serves no block: the swarm cannot serve this client.
    nobody = [local_swarm.bootstrap_identity.peer_id]  # type: ignore[union-attr]
    down = petalctl(
        "generate", *swarm_flags(local_swarm, nobody), "--prompt", "hi", "--max-retries", "1"
    )
    assert down.returncode == 3, down.stderr
    assert "no trusted server" in down.stderr and down.stdout == ""


class _Reader:
    """Collects a pipe's output in a thread, so the test can wait for text without blocking."""

    def __init__(self, pipe) -> None:
        self.chunks: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.text = ""
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        # Whole chunks, not a character per call: on a loaded machine a reader that lags lets the
        # test send its Ctrl-C only after the answer has ended.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while chunk := os.read(pipe.fileno(), 65536):
            self.chunks.put(decoder.decode(chunk))

    def wait_for(self, needle: str, timeout: float = 120, start: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while needle not in self.text[start:]:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} after {timeout} s; got:\n{self.text[-2000:]}")
            try:
                self.text += self.chunks.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
        return self.text.index(needle, start) + len(needle)

    def drain(self) -> str:
        """Everything read so far (for a failure message)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self.text += self.chunks.get_nowait()
        return self.text

    def wait_for_any(self, start: int, timeout: float = 120) -> None:
        """Wait until any text follows position ``start`` (a first streamed piece)."""
        deadline = time.monotonic() + timeout
        while len(self.text) <= start:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"nothing after {start} in {timeout} s:\n{self.text[-2000:]}")
            try:
                self.text += self.chunks.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue


def test_chat_ctrl_c_stops_the_answer_not_the_program(
    local_swarm: LocalSwarm, swarm_client: SwarmClient
):
    question = "What is a block?"
    # The model's words differ between machines (its training is not bit-identical across CPUs):
    # the reference is the start of the same greedy answer, computed here through the library.
    # EOS is suppressed for the first tokens in both, as in the chat's --min-new-tokens 900.
    reference = swarm_client.generate(
        [{"role": "user", "content": question}],
        GenerationParams(max_new_tokens=8, min_new_tokens=8),
    ).text
    assert reference, "the reference answer should not be empty"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "petalctl.main",
            "chat",
            *swarm_flags(local_swarm),
            "--max-new-tokens",
            "900",  # most of the 1024-token window: the answer outlasts the Ctrl-C below
            "--min-new-tokens",
            "900",
            "--stats",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        start_new_session=True,  # its own process group, like a terminal's job
        # Started with SIGINT ignored, as a background job of a script (`make test` under nohup,
        # where this test once failed: Python then installs no KeyboardInterrupt handler): the
        # chat must still stop its answer on Ctrl-C.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    out, err = _Reader(process.stdout), _Reader(process.stderr)
    try:
        assert process.stdin is not None
        err.wait_for("connected")
        process.stdin.write(question + "\n")
        process.stdin.flush()
        mark = out.wait_for("> ")
        out.wait_for_any(start=mark)  # the answer is streaming
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the whole group, as in a tty
        try:
            stopped = out.wait_for(" [stopped]", start=mark) - len(" [stopped]")
        except AssertionError as exc:  # say what the chat itself said
            tail = err.drain()[-3000:]
            raise AssertionError(f"{exc}\nthe chat's stderr ends with:\n{tail}") from None
        shown = out.text[mark:stopped]
        assert shown, "some of the answer was shown before Ctrl-C"
        # It is the model's greedy answer, cut short (one text is the start of the other).
        assert shown.startswith(reference) or reference.startswith(shown), (shown, reference)
        after_cancel = err.wait_for("stopped by cancelled")
        for command, reply in (("/reset", "chat forgotten"), ("/system Be brief.", "set")):
            process.stdin.write(command + "\n")
            process.stdin.flush()
            err.wait_for(reply)
        process.stdin.write("Who runs the servers?\n")
        process.stdin.flush()
        # A hang guard, not a speed limit: 900 tokens on a loaded 2-core machine take minutes.
        end = err.wait_for("stopped by ", start=after_cancel, timeout=600)
        reason = err.wait_for(")", start=end)
        assert err.text[end : reason - 1] in ("length", "eos", "stop_sequence")  # answered
        process.stdin.close()  # Ctrl-D
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_gateway_command_serves_with_a_token_from_the_token_command(
    local_swarm: LocalSwarm, tmp_path
):
    import httpx

    from swarm.localswarm import free_port
    from swarm.process import group_members

    tokens = tmp_path / "tokens"
    added = petalctl("gateway", "token", "add", "ci", "--file", str(tokens))
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert token.startswith("pk-") and token not in tokens.read_text()
    assert petalctl("gateway", "token", "list", "--file", str(tokens)).stdout == "ci\n"

    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "petalctl.main",
            "gateway",
            *swarm_flags(local_swarm),
            "--tokens-file",
            str(tokens),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).json()["ok"]:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.25)
        headers = {"Authorization": f"Bearer {token}"}
        models = httpx.get(url + "/v1/models", headers=headers).json()
        assert models["data"][0]["id"] == os.path.basename(local_swarm.model)
        assert (
            httpx.get(url + "/v1/models", headers={"Authorization": "Bearer x"}).status_code == 401
        )
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not group_members(process.pid), "the gateway left processes behind"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
