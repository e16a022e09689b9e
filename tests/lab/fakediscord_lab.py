"""The fake Discord (tests/fakediscord) as a process of its own, for the lab.

The deployed bot accepts a fake Discord only on a loopback address, so the lab runs this inside
the bot host's network namespace (``ip netns exec``): 127.0.0.1 there is the host's loopback.
Usage: ``LAB_DISCORD_TOKEN=... python -m tests.lab.fakediscord_lab``. It prints one JSON line
with its URLs, then answers one JSON line per command read from stdin:

  {"cmd": "state"}                      -> connected, identifies (tokens removed), synced commands
  {"cmd": "ask", "text": T, "timeout": S} -> the bot's final answer to "!T" posted by a student
                                           (the message, and its text without the footer)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from tests.bot.helpers import CHANNEL, answer_text, bot_reply_to, final
from tests.fakediscord.server import FakeDiscord


async def ask(fake: FakeDiscord, text: str, timeout: float) -> dict[str, Any]:
    asked = await fake.push_message(fake.channel_ids[CHANNEL], fake.user_ids["alice"], "!" + text)

    def answered() -> str | None:
        replies = bot_reply_to(fake, asked)
        content = fake.message(int(replies[0]["id"]))["content"] if replies else ""
        return content if content and final(content) else None

    reply = await fake.wait_for(answered, timeout, what="the bot's answer")
    return {"reply": reply, "text": answer_text(reply)}


async def serve() -> None:
    async with FakeDiscord(token=os.environ["LAB_DISCORD_TOKEN"]) as fake:
        urls = {"api_base": fake.api_base, "gateway_url": fake.gateway_url}
        print(json.dumps(urls), flush=True)
        while line := await asyncio.to_thread(sys.stdin.readline):
            request = json.loads(line)
            try:
                if request["cmd"] == "ask":
                    answer = await ask(fake, request["text"], float(request["timeout"]))
                else:
                    answer = {
                        "connected": fake.connected,
                        "identifies": fake.identifies,
                        "commands": sorted(
                            command["name"]
                            for where in (None, fake.guild_id)
                            for command in fake.commands(where)
                        ),
                    }
            except Exception as exc:  # the test shows it; the fake keeps serving the bot
                answer = {"error": repr(exc)}
            print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(serve())
