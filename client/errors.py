"""The client library's expected failures, as part of the kit's exception tree (swarm/errors.py).

Exception tree::

    KitError
    ├── ConfigError                        exit 2
    │   └── InvalidRequest                 exit 2   a parameter or prompt out of bounds; names the
    │       └── PromptTooLong              exit 2   field, the value and the limit
    ├── SwarmUnavailable                   exit 3
    │   └── GenerationFailed               exit 3   the trusted servers could not serve this request
    └── ClientStateError                   exit 1   used before start(), after close(), or a
                                                    conversation asked for two answers at once
"""

from __future__ import annotations

from swarm.errors import ConfigError, KitError, SwarmUnavailable


class InvalidRequest(ConfigError):
    """Bad input: ``field`` names what to change (the gateway reports it as OpenAI's ``param``)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class PromptTooLong(InvalidRequest):
    """The prompt (after trimming old turns) plus the answer does not fit the context window."""


class GenerationFailed(SwarmUnavailable):
    """The swarm failed while serving (no trusted route, retries exhausted, timeouts)."""


class ClientStateError(KitError):
    """The client or a conversation was used in a state that cannot serve the call."""
