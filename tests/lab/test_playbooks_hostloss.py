"""Losing a whole server host at replication 2 (the host is the planner's failure domain).

Runs after test_playbooks_converge.py and before the day-2 tests, and brings the host back.
The generation half needs the client's failover: a generation whose route ran through the host
that went down must continue on a replica. The route is the client's choice, so the stopped host
is one of the two that serve block 0 (each replica of block 0 is on a different host, which is
what the plan promises; checked first).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.lab.conftest_playbooks import (
    NUM_BLOCKS,
    REPLICATION,
    REPO_ROOT,
    CoverageSampler,
    SwarmLab,
)

pytestmark = pytest.mark.lab

# Greedy, so the answer during the host loss must equal the reference taken before it.
GENERATOR = """
import json, sys
from client.params import GenerationParams
from client.swarm_client import SwarmClient
from swarm.swarm_settings import SwarmSettings
params = GenerationParams(max_new_tokens=48, min_new_tokens=48, temperature=0)
with SwarmClient(SwarmSettings.load()) as client:
    print(json.dumps({"reference": client.generate("A swarm of bees", params).text}), flush=True)
    sys.stdin.readline()  # the test says go
    stream = client.stream("A swarm of bees", params)
    for n, delta in enumerate(stream):
        print(json.dumps({"delta": n}), flush=True)
        if n == 2:
            sys.stdin.readline()  # paused here while the host goes down
    print(json.dumps({"text": stream.wait().text}), flush=True)
"""


def _read(proc: subprocess.Popen[str], key: str, timeout: float) -> dict:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("{") and key in (doc := json.loads(line)):
            return doc
    raise AssertionError(f"the generator gave no {key!r} (exit {proc.poll()})")


def test_powering_off_a_server_host_keeps_every_block_served(swarm_lab: SwarmLab) -> None:
    lab = swarm_lab.lab
    assert swarm_lab.wait_for_replication(REPLICATION) == [REPLICATION] * NUM_BLOCKS
    plan = json.loads((swarm_lab.inventory.parent / ".petals" / "plan.json").read_text())
    block0 = [h for h, servers in plan["hosts"].items() if any(s["start"] == 0 for s in servers)]
    assert len(block0) == REPLICATION, plan  # block 0's replicas on distinct hosts
    victim = sorted(block0)[-1]

    generator = subprocess.Popen(
        ["ip", "netns", "exec", lab.netns, sys.executable, "-c", GENERATOR],
        env=lab.controller_env({**swarm_lab.swarm_env, "PYTHONPATH": str(REPO_ROOT)}),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert generator.stdin is not None
    sampler = None
    try:
        reference = _read(generator, "reference", 300)["reference"]
        generator.stdin.write("go\n")
        generator.stdin.flush()
        _read(generator, "delta", 120)  # the generation has started...
        sampler = CoverageSampler(swarm_lab)
        lab.stop_host(victim)  # ...and the whole host goes down under it
        generator.stdin.write("go\n")
        generator.stdin.flush()
        done = _read(generator, "text", 300)
        samples = sampler.stop()
        sampler = None
        readings = [s for s in samples if "min" in s]
        assert readings and min(s["min"] for s in readings) >= 1, samples[-5:]
        assert done["text"] == reference
    finally:
        if sampler is not None:
            sampler.stop()
        if generator.poll() is None:
            generator.kill()
        generator.wait(timeout=30)
        if not lab.is_running(victim):
            lab.start_host(victim)
    # The host is back: its servers start at boot and coverage returns to the target.
    assert swarm_lab.wait_for_replication(REPLICATION, timeout=300) == [REPLICATION] * NUM_BLOCKS
