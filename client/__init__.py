"""The kit's client side: a library for the private swarm (``SwarmClient``), the chat CLI's and
the gateway's building blocks. Importing it is cheap; torch and petals load on ``start()``."""

from client.conversation import Conversation
from client.errors import ClientStateError, GenerationFailed, InvalidRequest, PromptTooLong
from client.params import GenerationParams
from client.session import SwarmSession
from client.settings import ClientSettings
from client.streams import AsyncGenerationStream, CancelToken, GenerationStream, StreamStats
from client.swarm_client import PreparedPrompt, SwarmClient

__all__ = [
    "AsyncGenerationStream",
    "CancelToken",
    "ClientSettings",
    "ClientStateError",
    "Conversation",
    "GenerationFailed",
    "GenerationParams",
    "GenerationStream",
    "InvalidRequest",
    "PreparedPrompt",
    "PromptTooLong",
    "StreamStats",
    "SwarmClient",
    "SwarmSession",
]
