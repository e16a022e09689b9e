"""Closing petals' inference sessions never hangs a process (petals 2.2.0.post1, hivemind 1.1.12).

petals closes a server inference session by running a coroutine on hivemind's event-loop thread
(``RemoteExpertWorker``) and waiting for it without a timeout, and it does so from ``__del__`` too.
Two ways that waits forever:

- at interpreter exit, a session still referenced by a module global or a reference cycle is
  collected after the daemon event-loop thread has been frozen: the wait never ends, and a client
  that has printed its whole answer never exits (seen in CI: ``petalctl demo`` and a lab client,
  stack ``InferenceSession.__del__ -> close -> RemoteExpertWorker.run_coroutine`` while
  "Garbage-collecting"; tests/swarm/test_client_exit.py reproduces it);
- a close waits for the server's end-of-session reply, which a hung (SIGSTOPped) server never sends.

So: while the interpreter is finalizing, a close only forgets the stream (the process is going and
its connections with it); ``__del__`` hands the close to the event loop without waiting; an
explicit ``close()`` waits at most the session's ``request_timeout``; and nothing waits for the
event-loop thread from that thread itself. The sequence manager's update thread is likewise only
signalled, never joined, from ``__del__``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from concurrent.futures import Future
from typing import Any

logger = logging.getLogger(__name__)

_applied = False


def _loop_thread_or_none() -> tuple[asyncio.AbstractEventLoop | None, bool]:
    """hivemind's event loop for remote calls (None if not started here) and if we run on it."""
    import os

    from hivemind.moe.client.remote_expert_worker import RemoteExpertWorker

    thread = RemoteExpertWorker._event_thread
    future = RemoteExpertWorker._event_loop_fut
    if thread is None or future is None or RemoteExpertWorker._pid != os.getpid():
        return None, False
    if not future.done() or future.exception() is not None:
        return None, False
    loop: asyncio.AbstractEventLoop = future.result()
    return loop, thread is threading.current_thread()


def close_server_session(session: Any, *, wait: bool) -> None:
    """Close a ``_ServerInferenceSession``: tell its server, waiting request_timeout at most."""
    if session._outputs_stream is None:
        return  # already closed
    loop, on_loop = (None, False) if sys.is_finalizing() else _loop_thread_or_none()
    try:
        if loop is None or loop.is_closed():
            return  # nothing can be sent any more; the connection ends with the process or the P2P
        timeout = float(getattr(session.config, "request_timeout", 30.0) or 30.0)
        coro = asyncio.wait_for(session._aclose_stream(), timeout)
        if on_loop:
            loop.create_task(coro)  # waiting here would block the loop that must run it
            return
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, loop)
        if not wait:
            future.add_done_callback(_log_close_failure)
            return
        try:
            future.result(timeout + 1.0)
        except TimeoutError:  # concurrent.futures' and asyncio's are this builtin since 3.11
            future.cancel()
            logger.debug("a server did not confirm the end of a session in %.0f s", timeout)
    finally:
        session._outputs_stream = session._inputs_queue = None
        session.closed = True


def _log_close_failure(future: Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("closing an inference session failed: %r", future.exception())


def apply() -> None:
    """Patch petals' session and update-thread teardown as described above. Idempotent."""
    global _applied
    if _applied:
        return
    from petals.client import inference_session
    from petals.client.routing import sequence_manager

    server_session = inference_session._ServerInferenceSession
    session = inference_session.InferenceSession
    update_thread = sequence_manager._SequenceManagerUpdateThread

    def server_close(self: Any) -> None:
        close_server_session(self, wait=True)

    def server_del(self: Any) -> None:
        close_server_session(self, wait=False)

    def session_del(self: Any) -> None:
        if getattr(self, "_closed", True):
            return
        for server in reversed(getattr(self, "_server_sessions", [])):
            close_server_session(server, wait=False)
        self._server_sessions.clear()
        self._closed = True

    def thread_del(self: Any) -> None:
        self.should_shutdown = True  # the thread sees it at its next wake-up; never join here
        self.trigger.set()

    server_session.close = server_close
    server_session.__del__ = server_del
    session.__del__ = session_del
    update_thread.__del__ = thread_del
    _applied = True
