"""The Discord bot's expected failures, each with a short text a student may read.

Exception tree (all ``KitError``, so ``petalctl bot`` prints them on one line)::

    BotError                     something the bot expected could go wrong did
    ├── TokenError               missing, misplaced, readable by others, or a placeholder
    ├── QuestionRejected         empty, too long, or asked too fast (``reply`` says why)
    ├── QueueFull                too many questions are already waiting for the swarm
    └── AnswerFailed             the swarm could not answer (``reason`` is a metrics label)
        ├── SwarmDown            no connection to the private swarm, or no route through it
        └── AnswerTimeout        no first token (or no end) within the configured time
"""

from __future__ import annotations

from swarm.errors import ConfigError, KitError


class BotError(KitError):
    """An expected failure of the bot; ``str(error)`` is safe to show in Discord."""


class TokenError(BotError, ConfigError):
    """The Discord token cannot be used. The message never contains the token."""


class QuestionRejected(BotError):
    """A question the bot will not send to the swarm; the message is the reply."""

    def __init__(self, reply: str, *, reason: str) -> None:
        super().__init__(reply)
        self.reason = reason  # metrics label: empty | too_long | rate_limited


class QueueFull(BotError):
    pass


class AnswerFailed(BotError):
    reason = "error"


class SwarmDown(AnswerFailed):
    reason = "swarm_unavailable"


class AnswerTimeout(AnswerFailed):
    reason = "timeout"
