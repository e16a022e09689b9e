"""One question's way to an answer: checks, a 🧠 placeholder at once, a place in line, course
passages and earlier turns in the prompt, streamed generation, the footer, the database.

Every path ends with a final message: an answer, "stopped", or a short reason it failed. A
placeholder is never left behind, whatever goes wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord

from bot.conversation import NEW, Context
from bot.engine import Engine, Generation
from bot.errors import AnswerFailed, QuestionRejected, QueueFull
from bot.formatting import (
    AnswerStats,
    capacity_line,
    check_question,
    footer,
    queue_line,
    rate_limited_line,
)
from bot.jobs import CancelToken, Job
from bot.prompt import PromptPlan, PromptTooLong, plan_prompt, select_passages
from bot.store import WRITING, AnswerRecord, Store
from bot.streaming import NETWORK_ERRORS, Reroute, SendFirst, SendMore, StreamingReply

if TYPE_CHECKING:
    from bot.app import CourseBot

log = logging.getLogger(__name__)
RATING_EMOJIS = ("👍", "👎")


@dataclass
class Question:
    text: str
    kind: str  # prefix | slash | reply | thread | mention (a metrics label)
    user_id: int
    user_name: str
    guild_id: int | None
    channel_id: int
    message_id: int | None = None  # the student's message (None for slash commands)
    context: Context = field(default_factory=lambda: NEW)
    notes: list[str] = field(default_factory=list)  # shown under the answer (skipped files)


@dataclass
class Target:
    """Where the answer goes: the first message (replaces the placeholder) and more parts."""

    first: SendFirst
    more: SendMore
    reject: Callable[[str], Awaitable[object]]  # a short reply instead of an answer
    fallback: SendMore | None = None  # a plain channel message when editing is impossible
    reroute: Reroute | None = None  # a message again through the channel's route (no token)


class AnswerService:
    def __init__(self, bot: CourseBot) -> None:
        self.bot = bot
        self.settings = bot.settings

    # ------------------------------------------------------------------ checks
    def check(self, question: Question) -> None:
        settings = self.settings
        problem = check_question(
            question.text, settings.max_question_chars, settings.command_prefix
        )
        if problem:
            reason = "empty" if not question.text.strip() else "too_long"
            raise QuestionRejected(problem, reason=reason)
        wait = self.bot.rate_limiter.try_acquire(question.user_id)
        if wait is not None:
            line = rate_limited_line(wait, settings.rate_limit_count, settings.rate_limit_window_s)
            raise QuestionRejected(line, reason="rate_limited")

    def engines_for(self, question: Question) -> list[tuple[Engine, str | None]]:
        """(engine, A/B variant) pairs: one engine, or both in random order in A/B mode. A
        follow-up continues with the model that gave the earlier answer."""
        primary, other = self.bot.engine, self.bot.ab_engine
        if other is None:
            return [(primary, None)]
        if question.context.model is not None:
            chosen = other if question.context.model == other.label else primary
            return [(chosen, None)]
        pair = [primary, other]
        random.shuffle(pair)
        return [(pair[0], "A"), (pair[1], "B")]

    # ------------------------------------------------------------------ answering
    async def ask(self, question: Question, targets: Callable[[int], Target]) -> None:
        """Answer ``question``; ``targets(i)`` gives where answer ``i`` goes (two in A/B mode)."""
        metrics = self.bot.metrics
        try:
            self.check(question)
        except QuestionRejected as rejected:
            metrics.rejected.labels(rejected.reason).inc()
            await targets(0).reject(str(rejected))
            return
        metrics.questions.labels(question.kind).inc()
        job = self.bot.jobs.add(
            Job(question.user_id, question.channel_id, question.text[:40].replace("\n", " "))
        )
        try:
            # Placeholders first, one after the other: in A/B mode the second may only follow
            # up once the first has answered the interaction.
            opened: list[tuple[Engine, str | None, StreamingReply]] = []
            for index, (engine, variant) in enumerate(self.engines_for(question)):
                target = targets(index)
                header = f"**Answer {variant}**" if variant else ""
                reply = StreamingReply(
                    target.first,
                    target.more,
                    interval=self.settings.edit_interval_s,
                    header=header,
                    pacer=self.bot.pacers(question.channel_id),
                    fallback=target.fallback,
                    reroute=target.reroute,
                )
                try:
                    await reply.open()
                except (discord.HTTPException, *NETWORK_ERRORS) as exc:
                    metrics.errors.labels("discord").inc()
                    log.warning("could not post the placeholder: %r", exc)
                    continue
                opened.append((engine, variant, reply))
            pair_id = opened[0][2].message_ids[0] if opened and opened[0][1] else None
            for engine, variant, reply in opened:
                # Stored at once, so a 👍 given while the answer streams is kept.
                placeholder = self._record(question, variant, reply, pair_id, engine.label)
                await self.bot.store.run(Store.add_answer, placeholder)
            await asyncio.gather(
                *(
                    self._answer_and_settle(question, engine, variant, reply, job, pair_id)
                    for engine, variant, reply in opened
                )
            )
        finally:
            self.bot.jobs.done(job)

    def _record(
        self,
        question: Question,
        variant: str | None,
        reply: StreamingReply,
        pair_id: int | None,
        model: str,
        generation: Generation | None = None,
        sources: list[str] | None = None,
    ) -> AnswerRecord:
        """The database row of an answer: a placeholder ("writing") until ``generation``."""
        return AnswerRecord(
            id=reply.message_ids[0],
            message_ids=reply.message_ids,
            guild_id=question.guild_id,
            channel_id=question.channel_id,
            thread_id=question.context.thread_id,
            user_id=question.user_id,
            question_message_id=question.message_id,
            parent_id=question.context.parent_id,
            question=question.text,
            answer=generation.text.strip() if generation else "",
            model=generation.model if generation else model,
            sources=sources or [],
            ttft_s=generation.ttft_s if generation else None,
            tokens=generation.tokens if generation else 0,
            tokens_per_s=generation.tokens_per_s if generation else None,
            elapsed_s=generation.elapsed_s if generation else None,
            stopped_by=generation.stopped_by if generation else WRITING,
            pair_id=pair_id if variant else None,
            variant=variant,
            created_at=time.time(),
        )

    async def _answer_and_settle(
        self,
        question: Question,
        engine: Engine,
        variant: str | None,
        reply: StreamingReply,
        job: Job,
        pair_id: int | None,
    ) -> None:
        try:
            await self._answer_one(question, engine, variant, reply, job, pair_id)
        finally:
            # An answer that ended without text (an error, stopped in line) is no answer: its
            # placeholder row goes, so it neither counts in /stats nor is tidied at start.
            with contextlib.suppress(Exception):
                await asyncio.shield(
                    self.bot.store.run(Store.drop_unfinished, reply.message_ids[0])
                )

    async def _answer_one(
        self,
        question: Question,
        engine: Engine,
        variant: str | None,
        reply: StreamingReply,
        job: Job,
        pair_id: int | None,
    ) -> None:
        metrics = self.bot.metrics
        # Its own cancel token: /stop and /breakall reach it through the question's, but one
        # model's timeout (which cancels its token) must not stop the other answer in A/B.
        parent, token = job.token, CancelToken()
        parent.add_callback(lambda: token.cancel(by=parent.by, reason=parent.reason))
        job = dataclasses.replace(job, token=token)
        try:
            generation, plan = await self._generate(question, engine, reply, job)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(reply.fail("⏹ The bot is restarting; please ask again."))
            raise
        except QueueFull as exc:
            metrics.rejected.labels("queue_full").inc()
            await reply.fail(f"⏳ {exc}")
            return
        except AnswerFailed as exc:
            metrics.errors.labels(exc.reason).inc()
            await reply.fail(
                f"⚠️ {exc}. Please try again in a few minutes; `/status` shows the swarm."
            )
            return
        except PromptTooLong as exc:
            metrics.errors.labels("error").inc()
            log.error("cannot build a prompt: %s", exc)
            await reply.fail("⚠️ The bot is misconfigured (instructions too long); it was logged.")
            return
        except Exception:
            metrics.errors.labels("internal").inc()
            log.exception("answering failed")
            await reply.fail("⚠️ Something went wrong on my side; the error was logged.")
            return
        if generation is None:  # stopped while waiting in line
            metrics.cancelled.labels(job.token.reason or "stop").inc()
            who = f" by {job.token.by}" if job.token.by else ""
            await reply.fail(f"⏹ Stopped{who} before it started.")
            return
        await self._finish(question, variant, reply, job, generation, plan, pair_id)

    async def _generate(
        self, question: Question, engine: Engine, reply: StreamingReply, job: Job
    ) -> tuple[Generation | None, PromptPlan | None]:
        settings, slots = self.settings, self.bot.slots
        holder = slots.slot(on_position=lambda position: reply.set_status(queue_line(position)))
        # The queue gauges follow the slots (GenerationSlots.on_change, wired in CourseBot).
        entering = asyncio.ensure_future(holder.__aenter__())
        stopping = asyncio.ensure_future(job.token.wait())
        try:
            await asyncio.wait({entering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not entering.done():
                entering.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({entering})
        if entering.cancelled():
            return None, None
        entering.result()  # raises QueueFull
        try:
            if job.token.cancelled:
                return None, None
            await engine.connect()  # SwarmDown when the swarm is away
            plan = await self._plan(question, engine)
            max_new = min(settings.max_new_tokens, engine.context_window - plan.prompt_tokens)
            generation = await engine.generate(
                plan.messages,
                max_new_tokens=max(1, max_new),
                on_text=reply.append,
                cancel=job.token,
                first_token_timeout_s=settings.first_token_timeout_s,
                timeout_s=settings.answer_timeout_s,
                on_waiting=lambda waiting: reply.set_status(capacity_line()) if waiting else None,
            )
            return generation, plan
        finally:
            await holder.__aexit__(None, None, None)

    def update_gauges(self) -> None:
        metrics, slots = self.bot.metrics, self.bot.slots
        metrics.queue_length.set(slots.waiting)
        metrics.running.set(slots.running)

    async def _plan(self, question: Question, engine: Engine) -> PromptPlan:
        settings = self.settings
        passages = []
        knowledge = self.bot.knowledge
        if knowledge is not None and settings.knowledge_top_k > 0:
            query = question.text
            if question.context.history:
                query = f"{question.context.history[-1].question} {query}"
            hits = knowledge.search(query, settings.knowledge_top_k)
            passages = select_passages([h.passage for h in hits], settings.knowledge_max_chars)
        window = engine.context_window
        budget = max(window // 4, window - settings.max_new_tokens)
        return await asyncio.to_thread(
            plan_prompt,
            system_prompt=settings.system_prompt,
            passages=passages,
            history=question.context.history,
            question=question.text,
            count_tokens=engine.count_tokens,
            token_budget=budget,
            asker=question.user_name,
        )

    async def _finish(
        self,
        question: Question,
        variant: str | None,
        reply: StreamingReply,
        job: Job,
        generation: Generation,
        plan: PromptPlan | None,
        pair_id: int | None,
    ) -> None:
        metrics = self.bot.metrics
        sources = plan.sources if plan else []
        stats = AnswerStats(
            generation.ttft_s,
            generation.tokens_per_s,
            generation.tokens,
            generation.stopped_by,
            None if variant else generation.model,
        )
        who = job.token.by if generation.stopped_by == "cancelled" else ""
        line = footer(stats, sources, stopped_by_who=who)
        if plan is not None and plan.question_truncated:
            line += " · ✂️ question shortened to fit the model"
        for note in question.notes:
            line += f" · {note}"
        if plan is not None and plan.turns_dropped:
            line += f" · ✂️ {plan.turns_dropped} older turn(s) left out to fit the model"
        text = generation.text.strip()
        record = self._record(
            question, variant, reply, pair_id, generation.model, generation, sources
        )
        if text:
            # Stored before the final edit, so a rating given the moment the answer is shown
            # finds it; stored again afterwards in case the footer needed one more message.
            await self.bot.store.run(Store.add_answer, record)
            await reply.finish(line)
            if len(reply.message_ids) != len(record.message_ids) and not reply.gone:
                record = dataclasses.replace(record, message_ids=reply.message_ids)
                await self.bot.store.run(Store.add_answer, record)
        else:
            notice = (
                "⏹ Stopped before the first word."
                if generation.stopped_by == "cancelled"
                else "The model gave an empty answer; try asking differently."
            )
            await reply.fail(f"{notice}\n{line}")
        metrics.answers.labels(generation.model, generation.stopped_by).inc()
        if generation.stopped_by == "cancelled":
            metrics.cancelled.labels(job.token.reason or "stop").inc()
        if generation.ttft_s is not None:
            metrics.ttft.labels(generation.model).observe(generation.ttft_s)
        if generation.tokens_per_s is not None:
            metrics.speed.labels(generation.model).observe(generation.tokens_per_s)
        if reply.gone:
            return
        if self.settings.add_rating_reactions and text:
            last = reply.messages[-1]
            if isinstance(last, discord.Message):
                for emoji in RATING_EMOJIS:
                    try:
                        await last.add_reaction(emoji)
                    except discord.HTTPException as exc:
                        log.info("could not add %s under the answer: %s", emoji, exc.text)
                        break
