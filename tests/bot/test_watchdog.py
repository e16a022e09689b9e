"""The dead-man's switch on the alerting path: Watchdog heartbeats posted to the bot's webhook
as Alertmanager sends them, the fake Discord's alerts channel, and the pure switch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.deadman import DeadMansSwitch
from tests.bot.helpers import ScriptedEngine, alert, answers_in, make_bot
from tests.fakediscord.client_patch import running
from tests.fakediscord.server import FakeDiscord

pytestmark = pytest.mark.bot


def payload(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {"version": "4", "status": "firing", "receiver": "petals-discord", "alerts": alerts}


async def test_silence_is_reported_once_and_the_return_once(
    fake_discord: FakeDiscord, tmp_path: Path
) -> None:
    fake = fake_discord
    admin = fake.channel_ids["general"]
    settings: dict[str, Any] = {
        "http_enabled": True,
        "http_port": 0,
        "alerts_channel_id": admin,
        "watchdog_timeout_s": 1.0,
    }
    async with running(make_bot(tmp_path, ScriptedEngine(), **settings), fake) as bot:
        assert bot.web is not None
        url = f"http://127.0.0.1:{bot.web.port}/alertmanager"
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=payload(alert("firing", "Watchdog"))) as response:
                assert response.status == 200
            assert answers_in(fake, admin) == []  # the heartbeat itself is never shown
            down = await fake.wait_for(
                lambda: answers_in(fake, admin), timeout=10, what="the alerting-down post"
            )
            assert bot.watchdog is not None and bot.watchdog.down
            body = payload(alert("firing", "Watchdog"), alert("firing", "PetalsBlockUncovered"))
            async with http.post(url, json=body) as response:
                assert response.status == 200
            posts = await fake.wait_for(
                lambda: (m := answers_in(fake, admin)) and len(m) >= 3 and m,
                what="the back post and the real alert",
            )
    assert len(posts) == 3, [p["content"] for p in posts]
    assert "alerting path is down" in down[0]["content"]
    assert "alerting path is back" in posts[1]["content"]
    assert "PetalsBlockUncovered" in posts[2]["content"]
    assert all("Watchdog**" not in p["content"] for p in posts)


def test_switch_reports_each_change_once() -> None:
    now = [0.0]
    switch = DeadMansSwitch(900.0, clock=lambda: now[0])
    now[0] = 899.0
    assert switch.check() is None
    now[0] = 901.0
    assert switch.check() == "down"
    now[0] = 2000.0
    assert switch.check() is None  # said once
    assert switch.heartbeat() == "up"
    assert switch.heartbeat() is None
    now[0] = 2000.0 + 901.0
    assert switch.check() == "down"
