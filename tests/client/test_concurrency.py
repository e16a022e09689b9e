"""Many conversations at once: a new one opening does not stall the tokens of the others.

Eight streams run on one event loop (as the bot and the gateway run them); once all are past
their tenth token a ninth conversation opens (route lookup, connections, prefill). Every gap
between two tokens of the eight, measured where the consumer receives them, stays under 0.5 s.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from client import GenerationParams, SwarmClient

pytestmark = pytest.mark.swarm

STREAMS = 8
TOKENS = 120
MAX_GAP_S = 0.5


def test_a_ninth_conversation_does_not_stall_eight_streams(swarm_client: SwarmClient):
    params = GenerationParams(max_new_tokens=TOKENS, min_new_tokens=TOKENS)

    async def scenario() -> tuple[list[list[float]], float, float, float]:
        arrivals: list[list[float]] = [[] for _ in range(STREAMS)]
        warmed = [asyncio.Event() for _ in range(STREAMS)]

        async def run(index: int) -> None:
            stream = swarm_client.astream(f"Story {index}: once upon a time", params)
            async for _ in stream:
                arrivals[index].append(time.perf_counter())
                if len(arrivals[index]) == 10:
                    warmed[index].set()
            assert stream.result.completion_tokens == TOKENS

        tasks = [asyncio.create_task(run(i)) for i in range(STREAMS)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in warmed)), 120)
        opened_at = time.perf_counter()
        with swarm_client.conversation("You are a helpful assistant.") as ninth:
            answer = ninth.asend("What is a block?", GenerationParams(max_new_tokens=20))
            first = await answer.__anext__()
            first_at = time.perf_counter()
            assert first
            await answer.wait()
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        return arrivals, opened_at, first_at, answer.result.time_to_first_token_s or 0.0

    arrivals, opened_at, first_at, ninth_ttft = asyncio.run(scenario())
    gaps = [b - a for times in arrivals for a, b in itertools.pairwise(times)]
    during = [
        b - a
        for times in arrivals
        for a, b in itertools.pairwise(times)
        if b >= opened_at and a <= first_at
    ]
    worst = max(gaps)
    print(
        f"\n{STREAMS} streams x {TOKENS} tokens: worst gap {worst * 1000:.0f} ms, "
        f"worst while the ninth opened {max(during) * 1000:.0f} ms, "
        f"ninth first token after {ninth_ttft * 1000:.0f} ms"
    )
    assert during, "the ninth conversation opened after the streams had ended"
    assert worst <= MAX_GAP_S, f"a stream waited {worst:.2f} s between two tokens"
