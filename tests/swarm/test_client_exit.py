"""A client process exits once its work is done, whatever petals objects are still around.

CI caught `petalctl demo` and a lab client printing their whole answer and then never exiting:
an inference session collected at interpreter exit closed itself by waiting for hivemind's
event-loop thread, which is frozen by then (swarm/compat_exit.py). Here a client leaves a stepped
session referenced from a module global, so it is collected exactly then, deterministically.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from swarm.localswarm import LocalSwarm

pytestmark = pytest.mark.swarm

REPO = Path(__file__).resolve().parents[2]

LEAVE_SESSION_OPEN = """
import sys, torch
import swarm.compat
swarm.compat.apply()
from petals.client.inference_session import InferenceSession
from client.petals_model import open_distributed_model
from swarm.swarm_settings import SwarmSettings

with open_distributed_model(SwarmSettings.load()) as model:
    session = InferenceSession(model.transformer.h.sequence_manager, max_length=8).__enter__()
    with torch.inference_mode():
        hidden = session.step(model.transformer.word_embeddings(torch.tensor([[1, 2, 3]])))
    LEFT_OPEN = session  # a module global: collected only while the interpreter finalizes
    OTHERS = [server for server in session._server_sessions]
print("stepped", tuple(hidden.shape), len(OTHERS), flush=True)
"""


def test_client_exits_with_an_inference_session_left_open(local_swarm: LocalSwarm) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONFAULTHANDLER": "1",  # SIGABRT below prints every thread's stack
        "PETALS_MODEL": local_swarm.model,
        "PETALS_DHT_PREFIX": local_swarm.dht_prefix,
        "PETALS_INITIAL_PEERS": ",".join(local_swarm.initial_peers),
        "PETALS_TRUSTED_SERVERS": ",".join(local_swarm.trusted_peer_ids),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAVE_SESSION_OPEN],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Not a speed limit: a hang never ends, a healthy exit takes seconds even on a busy machine.
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        pytest.fail(f"the client hung at exit after: {out.strip()!r}\n{err[-4000:]}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, err[-4000:]
    words = out.split()
    assert words[:1] == ["stepped"], out
    assert int(words[-1]) >= 1, f"the session opened no server session: {out!r}"
