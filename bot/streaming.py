"""Show a growing answer in Discord: a placeholder at once, then throttled edits.

Discord allows about five edits per five seconds per channel, so one message is edited at most
once per ``interval`` (about a second) no matter how fast tokens arrive; the last edit happens as
soon as the answer ends. Past 2,000 characters the text continues in new messages (split by
``render_answer``, whose cuts do not move as text grows, so a finished message is never edited
again). One pump task does all Discord calls for an answer, so edits never overtake each other,
and each call takes its turn in the channel's pacer (bot/pacing.py), shared with other answers.

Whatever fails, the answer ends in a final state: a failed intermediate edit is retried by the
next one; the final one is retried a few times (a connection reset, a 429 discord.py gave up on,
a 5xx), an expired interaction token (401, code 50027, after 15 minutes) moves the edit to the
channel's own route (``reroute``), and when a message still cannot be edited the final text is
posted as a new channel message (``fallback``). Only a deleted message ends the showing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import discord

from bot.formatting import DISCORD_LIMIT, PLACEHOLDER, WRITING_FOOTER, render_answer
from bot.pacing import ChannelPacer

log = logging.getLogger(__name__)


class Editable(Protocol):
    id: int

    async def edit(self, *, content: str) -> Any: ...


SendFirst = Callable[[str], Awaitable[Editable]]
SendMore = Callable[[str], Awaitable[Editable]]
Reroute = Callable[[Editable], Editable | None]
# What a Discord call can raise besides an HTTP answer: resets, timeouts, closed sessions.
NETWORK_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)
TOKEN_EXPIRED = 50027  # "Invalid Webhook Token": an interaction token older than 15 minutes
FINAL_ATTEMPTS = 4


class StreamingReply:
    """One answer's messages. ``open()`` posts the placeholder; ``append()`` adds text (sync, on
    the loop); ``finish()``/``fail()`` render the final state and wait until it is shown."""

    def __init__(
        self,
        send_first: SendFirst,
        send_more: SendMore,
        *,
        interval: float = 1.0,
        limit: int = DISCORD_LIMIT,
        header: str = "",
        clock: Callable[[], float] = time.monotonic,
        pacer: ChannelPacer | None = None,
        fallback: SendMore | None = None,
        reroute: Reroute | None = None,
        retry_delay_s: float = 0.5,
    ) -> None:
        self._send_first = send_first
        self.pacer = pacer
        self._fallback = fallback  # posts a plain channel message when editing is impossible
        self._reroute = reroute  # the same message through the channel route (no token)
        self.retry_delay_s = retry_delay_s
        self._send_more = send_more
        self.interval = interval
        self.limit = limit
        self.header = header  # e.g. "**Answer A**" in A/B mode
        self._clock = clock
        self.messages: list[Editable] = []
        self._shown: list[str] = []
        self.text = ""
        self.status = PLACEHOLDER
        self._footer = ""
        self._final = False
        self._dirty = asyncio.Event()
        self._final_event = asyncio.Event()
        self._next_edit = 0.0
        self._pump_task: asyncio.Task[None] | None = None
        self.gone = False  # the message was deleted: nothing more can be shown

    @property
    def message_ids(self) -> list[int]:
        return [m.id for m in self.messages]

    async def open(self, status: str = PLACEHOLDER) -> Editable:
        self.status = status
        content = self._with_header(status)
        # Not paced: a slash command's first response must reach Discord within 3 seconds,
        # whatever the channel's edits are doing.
        message = await self._send_first(content)
        self.messages.append(message)
        self._shown.append(content)
        self._next_edit = self._clock() + self.interval
        self._pump_task = asyncio.create_task(self._pump(), name="answer-pump")
        return message

    def _with_header(self, text: str) -> str:
        return f"{self.header}\n{text}" if self.header else text

    def set_status(self, status: str) -> None:
        """Shown until the first text arrives (queue position, "connecting to the swarm")."""
        if not self.text and status != self.status:
            self.status = status
            self._dirty.set()

    def append(self, delta: str) -> None:
        if delta and not self._final:
            self.text += delta
            self._dirty.set()

    def render(self) -> list[str]:
        if self._final:
            body, footer = self.text, self._footer
        elif self.text.strip():
            body, footer = self.text, WRITING_FOOTER
        else:
            body, footer = "", self.status
        budget = self.limit - (len(self.header) + 1 if self.header else 0)
        parts = render_answer(body, footer, budget)
        if self.header:
            parts[0] = self._with_header(parts[0])
        return parts

    async def finish(self, footer: str) -> None:
        await self._close(footer)

    async def fail(self, notice: str) -> None:
        """End with ``notice`` under whatever text already arrived (never a bare 🧠)."""
        await self._close(notice)

    async def _close(self, footer: str) -> None:
        if self._final:
            return
        self._footer, self._final = footer, True
        self._dirty.set()
        self._final_event.set()
        if self._pump_task is not None:
            try:
                await self._pump_task
            except Exception:  # a bug in the pump must not take the answer's ending with it
                log.exception("answer pump failed for %s", self.message_ids)

    async def _paced(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if self.pacer is None:
            return await call()
        async with self.pacer.turn():
            return await call()

    async def _pump(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            if not self._final:
                delay = self._next_edit - self._clock()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._final_event.wait(), delay)
            final = self._final
            self._dirty.clear()
            if final:
                await self._show_final()
                return
            await self._show(self.render())
            self._next_edit = self._clock() + self.interval
            if self.gone:
                return

    async def _show_final(self) -> None:
        for attempt in range(FINAL_ATTEMPTS):
            if await self._show(self.render()) or self.gone:
                return
            await asyncio.sleep(self.retry_delay_s * 2**attempt)
        # Still not shown: post what is missing as new messages rather than leave "writing…".
        parts = self.render()
        for index, content in enumerate(parts):
            if index < len(self._shown) and self._shown[index] == content:
                continue
            if self._fallback is None:
                log.error("could not show the end of answer %s", self.message_ids)
                return
            try:
                message = await self._paced(functools.partial(self._fallback, content))
            except (discord.HTTPException, *NETWORK_ERRORS) as exc:
                log.error("could not post the end of answer %s: %r", self.message_ids, exc)
                return
            log.warning("answer %s ended in a new message %s", self.message_ids, message.id)
            if index < len(self.messages):
                self.messages[index], self._shown[index] = message, content
            else:
                self.messages.append(message)
                self._shown.append(content)

    async def _show(self, parts: list[str]) -> bool:
        """Bring the messages up to ``parts``; False when a call failed (retry later)."""
        for index, content in enumerate(parts):
            if index < len(self._shown) and self._shown[index] == content:
                continue
            try:
                if index < len(self.messages):
                    message = self.messages[index]
                    await self._paced(functools.partial(message.edit, content=content))
                else:
                    sent = await self._paced(functools.partial(self._send_more, content))
                    self.messages.append(sent)
            except discord.NotFound:
                log.info("answer message %s was deleted; not showing more", self.message_ids)
                self.gone = True
                return False
            except discord.HTTPException as exc:
                if exc.status == 401 and exc.code == TOKEN_EXPIRED:
                    self._token_expired(index)
                elif exc.status == 429 and self.pacer is not None:
                    self.pacer.back_off(_retry_after(exc))
                log.warning("could not update answer message (%s %s)", exc.status, exc.text)
                return False
            except NETWORK_ERRORS as exc:
                log.warning("could not update answer message: %r", exc)
                return False
            if index < len(self._shown):
                self._shown[index] = content
            else:
                self._shown.append(content)
        return True

    def _token_expired(self, index: int) -> None:
        """Edit through the channel from now on; sends go to the channel too."""
        if self._fallback is not None:
            self._send_more = self._fallback
        if self._reroute is None or index >= len(self.messages):
            return
        rerouted = self._reroute(self.messages[index])
        if rerouted is not None:
            self.messages[index] = rerouted
            log.info("interaction token expired; editing %s through the channel", rerouted.id)


def _retry_after(exc: discord.HTTPException) -> float:
    headers = getattr(exc.response, "headers", None) or {}
    try:
        return float(headers.get("Retry-After", 1.0))
    except (TypeError, ValueError):
        return 1.0
