"""``CourseBot``: the discord.py bot that receives its engine(s), settings and database, routes
messages, and handles every command error in one place.

Routing of a message in an allowed channel (see ``allowed``): a known prefix command runs; a
reply to one of the bot's answers, any message in a conversation thread, a message starting with
the prefix, or one mentioning the bot is a question. Everything else, and every message from a
bot, is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.alerttext import AlertmanagerPayload, alert_messages
from bot.answering import AnswerService, Question, Target
from bot.attachments import read_attachments
from bot.conversation import NEW, context_for, referenced_message
from bot.deadman import DeadMansSwitch, down_text, is_watchdog, up_text, without_watchdog
from bot.engine import Engine
from bot.formatting import unknown_command_line
from bot.jobs import Jobs
from bot.knowledge import CourseIndex, load_course
from bot.limits import GenerationSlots, RateLimiter
from bot.metrics import BotMetrics
from bot.pacing import Pacers
from bot.prompt import quote, sanitise_name
from bot.settings import BotSettings, load_webhook_secret
from bot.store import AsyncStore, Store
from bot.streaming import NETWORK_ERRORS
from bot.webhook import HttpServer, create_http_app
from client.failover import RecoveryMetrics
from client.recovery_metrics import register_recovery_sources

log = logging.getLogger(__name__)
MAX_REPLIED_CHARS = 1500  # of a replied-to message a mention asks about
MAX_COMMAND_CHARS = 32  # a longer single "word" after the prefix is treated as a question
INTERRUPTED = "⚠️ This answer was interrupted: the bot restarted while writing it. Please ask again."
COGS = ("bot.cogs.ask", "bot.cogs.control", "bot.cogs.feedback", "bot.cogs.admin")


def default_intents() -> discord.Intents:
    """Only what the bot uses: guild structure, messages and their text (for the prefix), and
    reactions (ratings). No members or presences."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_messages = True
    intents.message_content = True
    intents.guild_reactions = True
    return intents


class CourseBot(commands.Bot):
    def __init__(
        self,
        settings: BotSettings,
        engine: Engine,
        store: Store,
        *,
        ab_engine: Engine | None = None,
        metrics: BotMetrics | None = None,
        intents: discord.Intents | None = None,
        guild_ready_timeout: float = 2.0,
    ) -> None:
        super().__init__(
            command_prefix=settings.command_prefix,
            intents=intents or default_intents(),
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            guild_ready_timeout=guild_ready_timeout,
        )
        self.settings = settings
        self.engine = engine
        self.ab_engine = ab_engine
        self.store = AsyncStore(store)
        self.metrics = metrics or BotMetrics()
        # The client's failover counters (recoveries, capacity waits), per model, on /metrics.
        register_recovery_sources(self.metrics.registry, self._recovery_sources, ("model",))
        self.jobs = Jobs()
        self.slots = GenerationSlots(settings.max_concurrent, settings.max_queue)
        self.pacers = Pacers(settings.channel_edit_calls, settings.channel_edit_window_s)
        self.rate_limiter = RateLimiter(settings.rate_limit_count, settings.rate_limit_window_s)
        self.knowledge: CourseIndex | None = None
        self.chosen_channels: dict[int, int] = {}  # guild id -> channel id, from /setup
        self.answers = AnswerService(self)
        self.slots.on_change = self.answers.update_gauges  # petals_bot_queue_length and running
        self._background: set[asyncio.Task[Any]] = set()
        self.watchdog: DeadMansSwitch | None = None
        self.web: HttpServer | None = None
        self.tree.error(self.on_app_command_error)

    def _recovery_sources(self) -> list[tuple[tuple[str], RecoveryMetrics]]:
        found = []
        for engine in filter(None, (self.engine, self.ab_engine)):
            metrics = getattr(engine, "recovery_metrics", None)  # engines on a SwarmClient
            if metrics is not None:
                found.append(((engine.label,), metrics))
        return found

    # ---------------------------------------------------------------- lifecycle
    async def setup_hook(self) -> None:
        self.chosen_channels = await self.store.run(Store.channels)
        self._spawn(self.tidy_interrupted(), "tidy-interrupted")
        if self.settings.course_dir is not None:
            await self.reload_knowledge()
        for engine in filter(None, (self.engine, self.ab_engine)):
            await engine.prepare()
        for name in COGS:
            await self.load_extension(name)
        if self.settings.http_enabled:
            app = create_http_app(
                self.metrics,
                self.post_alerts,
                self.health,
                bearer_token=load_webhook_secret(self.settings),
            )
            self.web = HttpServer(app, self.settings.http_host, self.settings.http_port)
            await self.web.start()
            if self.settings.watchdog_timeout_s > 0 and self.settings.alerts_channel_id:
                self.watchdog = DeadMansSwitch(self.settings.watchdog_timeout_s)
                self._spawn(self._watch_alerting(self.watchdog), "watchdog")
        if self.settings.sync_commands:
            await self.sync_commands()

    async def sync_commands(self) -> None:
        if self.settings.guild_ids:
            for guild_id in self.settings.guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def close(self) -> None:
        cancelled = self.jobs.cancel_all(by="", reason="shutdown")
        if cancelled:
            log.info("shutting down: stopping %d answer(s)", len(cancelled))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    for job in cancelled:
                        await job.finished.wait()
        if self.web is not None:
            await self.web.stop()
        await super().close()
        for engine in filter(None, (self.engine, self.ab_engine)):
            await engine.close()
        await asyncio.to_thread(self.store.close)

    def _spawn(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def tidy_interrupted(self) -> int:
        """Edit the placeholders a crash left ("🧠 writing…" for good) to say the answer was
        interrupted; returns how many were tidied. One that cannot be reached now is tried
        again at the next start."""
        tidied = 0
        for record in await self.store.run(Store.unfinished):
            channel = self.get_partial_messageable(record.thread_id or record.channel_id)
            try:
                await channel.get_partial_message(record.id).edit(content=INTERRUPTED)
            except discord.NotFound:
                pass  # deleted meanwhile: nothing to tidy
            except (discord.HTTPException, *NETWORK_ERRORS) as exc:
                log.warning("could not tidy interrupted answer %d: %r", record.id, exc)
                continue
            await self.store.run(Store.mark_interrupted, record.id)
            tidied += 1
        if tidied:
            log.info("tidied %d answer(s) a restart had interrupted", tidied)
        return tidied

    def health(self) -> dict[str, Any]:
        return {
            "ready": self.is_ready() and not self.is_closed(),
            "guilds": len(self.guilds),
            "running": self.slots.running,
            "waiting": self.slots.waiting,
            "knowledge_passages": self.knowledge.passages if self.knowledge else 0,
        }

    async def reload_knowledge(self) -> CourseIndex | None:
        folder = self.settings.course_dir
        if folder is None:
            return None
        index = await asyncio.to_thread(load_course, folder)
        self.knowledge = index
        log.info("course knowledge from %s: %s", folder, index.summary())
        return index

    # ---------------------------------------------------------------- channels and roles
    def allowed(self, channel: Any) -> bool:
        """Whether the bot answers in ``channel`` (a thread counts as its parent)."""
        guild = getattr(channel, "guild", None)
        if guild is None:
            return False  # no direct messages: questions belong in the course's channel
        channel_id = (
            getattr(channel, "parent_id", None)
            if isinstance(channel, discord.Thread)
            else channel.id
        )
        chosen = self.chosen_channels.get(guild.id)
        if chosen is not None:
            return channel_id == chosen
        return not self.settings.channels or channel_id in self.settings.channels

    def answer_channel(self, guild: discord.Guild | None) -> int | None:
        if guild is None:
            return None
        chosen = self.chosen_channels.get(guild.id)
        if chosen is not None:
            return chosen
        return self.settings.channels[0] if self.settings.channels else None

    def is_moderator(self, user: discord.abc.User) -> bool:
        if not isinstance(user, discord.Member):
            return False
        if user.guild_permissions.administrator:
            return True
        if self.settings.moderator_role_ids:  # ids cannot be copied by naming a role alike
            return any(role.id in self.settings.moderator_role_ids for role in user.roles)
        return any(role.name in self.settings.moderator_roles for role in user.roles)

    # ---------------------------------------------------------------- messages
    async def on_message(self, message: discord.Message) -> None:
        if (
            message.author.bot
            or message.webhook_id is not None
            or not self.allowed(message.channel)
        ):
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        context = await self.get_context(message)
        if context.valid:
            await self.invoke(context)
            return
        await self.route_question(message)

    async def route_question(self, message: discord.Message) -> None:
        if self.user is None:  # not logged in (yet)
            return
        prefix = self.settings.command_prefix
        content = message.content.strip()
        found = await context_for(
            message,
            self.store,
            bot_id=self.user.id,
            prefix=prefix,
            max_turns=self.settings.max_history_turns,
        )
        # A reply pings its author unless switched off, so only a mention typed in the text
        # counts on a reply: it asks about the replied-to message.
        typed = any(m in content for m in (f"<@{self.user.id}>", f"<@!{self.user.id}>"))
        mentioned = typed or (self.user in message.mentions and message.reference is None)
        if found is not None:
            kind = "thread" if found.thread_id == message.channel.id else "reply"
        elif content.startswith(prefix):
            kind = "prefix"
        elif mentioned:
            kind = "mention"
        else:
            return
        text = content
        for mention in (f"<@{self.user.id}>", f"<@!{self.user.id}>"):
            text = text.replace(mention, " ")
        text = text.strip()
        if text.startswith(prefix):
            text = text[len(prefix) :].strip()
            words = text.split()
            one_word = len(words) == 1 and len(text) <= MAX_COMMAND_CHARS
            if kind == "prefix" and one_word and not text.endswith("?"):
                await self._reply(message, unknown_command_line(words[0], prefix))
                return
        if found is None and message.reference is not None:
            text = await self._about_replied(message, text)
        await self.ask_in_channel(message, text, kind, found or NEW)

    async def _about_replied(self, message: discord.Message, text: str) -> str:
        """A question asked by mentioning the bot in a reply: the replied-to message, quoted."""
        replied = await referenced_message(message)
        if replied is None or not replied.content.strip():
            return text
        who = sanitise_name(replied.author.display_name) or "someone"
        body = replied.content.strip()[:MAX_REPLIED_CHARS]
        return f"About this message from {who}:\n{quote(body)}\n\n{text or 'What about it?'}"

    async def ask_in_channel(
        self, message: discord.Message, text: str, kind: str, context: Any
    ) -> None:
        attached, notes = await read_attachments(message.attachments)
        question = Question(
            text=f"{text}\n\n{attached}".strip() if attached else text,
            notes=notes,
            kind=kind,
            user_id=message.author.id,
            user_name=message.author.display_name,
            guild_id=message.guild.id if message.guild else None,
            channel_id=message.channel.id,
            message_id=message.id,
            context=context,
        )

        def target(index: int) -> Target:
            async def first(content: str) -> Any:
                return await message.reply(content, mention_author=False)

            return Target(
                first,
                message.channel.send,
                lambda line: self._reply(message, line),
                fallback=message.channel.send,
            )

        await self.answers.ask(question, target)

    async def _reply(self, message: discord.Message, line: str) -> None:
        with contextlib.suppress(discord.HTTPException):
            await message.reply(line, mention_author=False)

    # ---------------------------------------------------------------- alerts
    async def _watch_alerting(self, watchdog: DeadMansSwitch) -> None:
        every = min(30.0, max(watchdog.timeout_s / 10, 0.05))
        while not self.is_closed():
            await asyncio.sleep(every)
            silent = watchdog.silent_for()
            if watchdog.check() == "down":
                log.error("no Watchdog alert for %.0f s: the alerting path is down", silent)
                if not await self._post_alert_texts([down_text(silent)], quiet=True):
                    watchdog.down = False  # not shown: say it at the next check

    async def post_alerts(self, payload: AlertmanagerPayload) -> None:
        """Post to the admin channel; raises (so the webhook answers 503) when it cannot.
        The Watchdog heartbeat is not shown; it feeds the dead-man's switch."""
        heartbeat = [a for a in payload.alerts if is_watchdog(a.labels) and a.status == "firing"]
        if heartbeat and self.watchdog is not None:
            silent = self.watchdog.silent_for()
            if self.watchdog.heartbeat() == "up":
                log.info("Watchdog alerts arrive again after %.0f s", silent)
                await self._post_alert_texts([up_text(silent)], quiet=True)
        payload = without_watchdog(payload)
        if payload.alerts:
            await self._post_alert_texts(alert_messages(payload))

    async def _post_alert_texts(self, texts: list[str], *, quiet: bool = False) -> bool:
        """``quiet``: log a failure and return False instead of raising."""
        try:
            await self._send_alert_texts(texts)
        except Exception as exc:
            if not quiet:
                raise
            log.warning("could not post to the alerts channel: %r", exc)
            return False
        return True

    async def _send_alert_texts(self, texts: list[str]) -> None:
        channel_id = self.settings.alerts_channel_id
        if channel_id is None:
            for text in texts:
                log.warning("alert (no alerts_channel_id set): %s", text)
            return
        channel = self.get_channel(channel_id) or await self.fetch_channel(channel_id)
        if not isinstance(channel, discord.abc.Messageable):
            raise RuntimeError(f"alerts_channel_id {channel_id} is not a text channel")
        for text in texts:
            await channel.send(text)

    # ---------------------------------------------------------------- errors, in one place
    async def on_command_error(
        self, context: commands.Context[Any], error: commands.CommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(error, commands.HybridCommandError):
            original = getattr(error.original, "original", error.original)
        if isinstance(original, commands.CommandNotFound):
            return
        if isinstance(original, commands.CheckFailure | app_commands.CheckFailure):
            line = str(original) or "You cannot use this command here."
        elif isinstance(original, commands.UserInputError):
            line = f"{original} — see `{self.settings.command_prefix}help`."
        else:
            log.error("command %s failed", context.command, exc_info=original)
            line = "⚠️ Something went wrong on my side; the error was logged."
        with contextlib.suppress(discord.HTTPException):
            await context.send(line, ephemeral=True)

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.CommandNotFound):
            line = (
                f"I don't know `/{error.name}` (any more). Try `/ask`, `/stop`, `/status` or "
                f"`{self.settings.command_prefix}help`."
            )
        elif isinstance(error, app_commands.CheckFailure):
            line = str(error) or "You cannot use this command here."
        else:
            original = getattr(error, "original", error)
            log.error("slash command failed", exc_info=original)
            line = "⚠️ Something went wrong on my side; the error was logged."
        with contextlib.suppress(discord.HTTPException):
            if interaction.response.is_done():
                await interaction.followup.send(line, ephemeral=True)
            else:
                await interaction.response.send_message(line, ephemeral=True)
