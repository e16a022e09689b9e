"""`petalctl bot` as a real process, pointed at the fake Discord through its test settings: every
rating the bot acknowledged (``petals_bot_ratings_total`` on /metrics, counted only after the
commit) is in the database after the bot is SIGKILLed, and a restarted bot reports it and
tidies the answers the kill interrupted."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from bot.app import INTERRUPTED
from swarm.localswarm import LocalSwarm, free_port
from swarm.process import descendants, group_members
from tests.bot.helpers import CHANNEL, bot_reply_to, final
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot

START_TIMEOUT = 180.0  # a cold start imports torch and petals on two busy cores
PETALCTL = Path(sys.executable).parent / "petalctl"


def realistic_token() -> str:
    """Shaped like a Discord bot token (the bot refuses placeholders such as the fake's default)."""
    user = base64.urlsafe_b64encode(str(secrets.randbits(60)).encode()).decode().rstrip("=")
    return f"{user}.{secrets.token_urlsafe(5)}.{secrets.token_urlsafe(28)}"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=realistic_token()) as server:
        yield server


@dataclass
class BotProcess:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    tree: dict[int, str] = field(default_factory=dict)  # descendants: pid -> start time

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def remember_children(self) -> None:
        """Note the bot's descendants (its DHT process, p2pd): once the bot is SIGKILLed they
        are orphans that the fixture must still reap."""
        self.tree |= descendants(self.process.pid)

    def leftovers(self) -> list[int]:
        alive = [p for p, start in self.tree.items() if descendants_alive(p, start)]
        return sorted(set(group_members(self.process.pid)) | set(alive))


def descendants_alive(pid: int, start: str) -> bool:
    """Whether ``pid`` is still the same (non-zombie) process that started at ``start``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return False
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0] != "Z" and fields[19] == start


StartBot = Callable[[str], BotProcess]


@pytest.fixture
def start_bot(fake: FakeDiscord, local_swarm: LocalSwarm, tmp_path: Path) -> Iterator[StartBot]:
    started: list[BotProcess] = []
    swarm = local_swarm.settings()

    def start(name: str) -> BotProcess:
        port = free_port()
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("PETALS_", "DISCORD"))
        }
        env |= {
            "PETALS_BOT_TOKEN": fake.token,
            "PETALS_BOT_DISCORD_API_BASE": fake.api_base,
            "PETALS_BOT_DISCORD_GATEWAY_URL": fake.gateway_url,
            "PETALS_BOT_DATABASE": str(tmp_path / "ratings.sqlite3"),
            "PETALS_BOT_HTTP_PORT": str(port),
            "PETALS_BOT_MAX_NEW_TOKENS": "60",
            "PETALS_BOT_EDIT_INTERVAL_S": "0.3",
            "PETALS_MODEL": swarm.model,
            "PETALS_DHT_PREFIX": swarm.effective_dht_prefix,
            "PETALS_INITIAL_PEERS": ",".join(swarm.initial_peers),
            "PETALS_TRUSTED_SERVERS": ",".join(swarm.trusted_servers),
        }
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [str(PETALCTL), "bot"],
                cwd=tmp_path,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        bot = BotProcess(process, port, log)
        started.append(bot)
        return bot

    yield start
    for bot in started:
        if bot.process.poll() is None:
            bot.remember_children()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bot.process.pid, signal.SIGKILL)
        for pid, begun in bot.tree.items():
            if descendants_alive(pid, begun):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        bot.process.wait(timeout=30)
    for bot in started:
        deadline = time.monotonic() + 30
        while bot.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert bot.leftovers() == [], bot.log.read_text()[-2000:]


def writing_rows(database: Path) -> list[int]:
    """Answers the database holds as still being written (placeholders)."""
    db = sqlite3.connect(database)
    try:
        rows = db.execute("SELECT id FROM answers WHERE stopped_by = 'writing' ORDER BY id")
        return [row[0] for row in rows.fetchall()]
    finally:
        db.close()


async def get(bot: BotProcess, path: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(bot.base + path) as reply:
        return reply.status, await reply.text()


async def wait_ready(fake: FakeDiscord, bot: BotProcess) -> None:
    async def ready() -> bool:
        if bot.process.poll() is not None:
            raise AssertionError(f"the bot exited: {bot.log.read_text()[-3000:]}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            status, _ = await get(bot, "/healthz")
            return status == 200 and fake.connected
        return False

    async with asyncio.timeout(START_TIMEOUT):
        while not await ready():
            await asyncio.sleep(0.2)


async def acknowledged(bot: BotProcess, rating: str) -> int:
    _, text = await get(bot, "/metrics")
    match = re.search(rf'^petals_bot_ratings_total{{rating="{rating}"}} (\S+)$', text, re.M)
    return int(float(match[1])) if match else 0


async def test_acknowledged_ratings_survive_sigkill(
    fake: FakeDiscord, start_bot: StartBot, tmp_path: Path
) -> None:
    channel = fake.channel_ids[CHANNEL]
    alice, bob, carol, maya = (fake.user_ids[n] for n in ("alice", "bob", "carol", "maya"))
    bot = start_bot("first")
    await wait_ready(fake, bot)
    asked = await fake.push_message(channel, alice, "!What is a block?")

    def answered() -> int | None:
        replies = bot_reply_to(fake, asked)
        if replies and final(fake.message(int(replies[0]["id"]))["content"]):
            return int(replies[0]["id"])
        return None

    answer = await fake.wait_for(answered, START_TIMEOUT, what="the answer")
    votes = [(alice, "👍"), (bob, "👎"), (carol, "👍"), (maya, "👍")]
    for user, emoji in votes:
        await fake.push_reaction(channel, answer, user, emoji)
    async with asyncio.timeout(30):
        while (await acknowledged(bot, "up"), await acknowledged(bot, "down")) != (3, 1):
            await asyncio.sleep(0.02)
    # Three more questions, then the kill while they are being written or wait in line: their
    # placeholders ("writing" rows) must be tidied by the restarted bot.
    for user in (alice, bob, carol):
        await fake.push_message(channel, user, "!And what is a server?")
    unfinished = await fake.wait_for(
        lambda: writing_rows(tmp_path / "ratings.sqlite3"), 30, what="answers being written"
    )
    bot.remember_children()
    os.kill(bot.process.pid, signal.SIGKILL)  # right after the acknowledgements
    assert bot.process.wait(timeout=30) == -signal.SIGKILL
    left = writing_rows(tmp_path / "ratings.sqlite3")
    assert left, unfinished  # answers the kill interrupted

    db = sqlite3.connect(tmp_path / "ratings.sqlite3")
    rows = db.execute("SELECT user_id, rating FROM ratings WHERE answer_id = ?", (answer,))
    assert dict(rows.fetchall()) == {alice: 1, bob: -1, carol: 1, maya: 1}
    db.close()

    restarted = start_bot("restarted")
    await wait_ready(fake, restarted)
    await fake.wait_for(
        lambda: all(fake.message(answer_id)["content"] == INTERRUPTED for answer_id in left),
        30,
        what="the interrupted answers tidied",
    )
    assert writing_rows(tmp_path / "ratings.sqlite3") == []
    record = fake.interaction(await fake.push_interaction("stats", None, maya, channel))
    await fake.wait_for(lambda: record.callbacks, 30, what="/stats")
    assert "1 rated: 👍 3 · 👎 1" in record.callbacks[0]["data"]["content"]
    restarted.process.send_signal(signal.SIGTERM)
    assert restarted.process.wait(timeout=60) == 0, restarted.log.read_text()[-3000:]
    for process in (bot, restarted):
        assert fake.token not in process.log.read_text()  # the token is never logged
