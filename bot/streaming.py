"""Show a growing answer in Discord: a placeholder at once, then throttled edits.

Discord allows about five edits per five seconds per channel, so one message is edited at most
once per ``interval`` (about a second) no matter how fast tokens arrive; the last edit happens as
soon as the answer ends. Past 2,000 characters the text continues in new messages (split by
``render_answer``, whose cuts do not move as text grows, so a finished message is never edited
again). One pump task does all Discord calls for an answer, so edits never overtake each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import discord

from bot.formatting import DISCORD_LIMIT, PLACEHOLDER, WRITING_FOOTER, render_answer

log = logging.getLogger(__name__)


class Editable(Protocol):
    id: int

    async def edit(self, *, content: str) -> Any: ...


SendFirst = Callable[[str], Awaitable[Editable]]
SendMore = Callable[[str], Awaitable[Editable]]


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
    ) -> None:
        self._send_first = send_first
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
            await self._pump_task

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
            await self._show(self.render(), final=final)
            self._next_edit = self._clock() + self.interval
            if final or self.gone:
                return

    async def _show(self, parts: list[str], *, final: bool) -> None:
        for index, content in enumerate(parts):
            if index < len(self._shown) and self._shown[index] == content:
                continue
            try:
                if index < len(self.messages):
                    await self.messages[index].edit(content=content)
                else:
                    self.messages.append(await self._send_more(content))
            except discord.NotFound:
                log.info("answer message %s was deleted; not showing more", self.message_ids)
                self.gone = True
                return
            except discord.HTTPException as exc:
                # A failed intermediate edit is retried by the next one; a failed final one is
                # logged (the generation is done; there is nothing better to do).
                log.warning("could not update answer message (%s %s)", exc.status, exc.text)
                if final:
                    continue
                return
            if index < len(self._shown):
                self._shown[index] = content
            else:
                self._shown.append(content)
