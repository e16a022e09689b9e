"""The probe: what a student feels. Every interval it generates a few tokens through the trusted
client path (petals' distributed model bound to the private swarm's trusted servers) and reports
time to first token and tokens/s, or the reason it failed, to ``HealthMetrics``.

It runs on a thread of its own (petals' generation blocks). The distributed model, with its own
DHT client, is opened once and kept; after a failure it is closed and opened again on the next
run. Petals retries a missing block forever by default; the probe caps retries so that an
uncovered block becomes a reported failure within seconds instead of a hung probe.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monitoring.metrics import HealthMetrics, ProbeFailureReason
from swarm.errors import SwarmUnavailable

if TYPE_CHECKING:
    from swarm.swarm_settings import SwarmSettings

log = logging.getLogger(__name__)

# Passed to petals' ClientConfig: give up on a block after this many attempts (default: never),
# and do not back off longer than this between them.
PROBE_MAX_RETRIES = 3
PROBE_MAX_BACKOFF_S = 2.0

OpenModel = Callable[..., contextlib.AbstractContextManager[Any]]


# Failures that mean "the swarm cannot serve", matched by class name so that this module does not
# import petals: petals' MissingBlocksError (no allowed server holds a block) and hivemind's
# ControlFailure (p2pd could not dial the server it was routed to, e.g. one that just stopped).
_UNAVAILABLE_ERRORS = frozenset({"MissingBlocksError", "ControlFailure"})


class ProbeCancelled(Exception):
    """The service is stopping; the generation in progress is abandoned, not a failure."""


class ProbeTimeout(Exception):
    """A probe generation ran past its deadline."""


def classify_failure(exc: BaseException) -> ProbeFailureReason:
    """The metric reason for a failed probe (pure): timeout, unavailable or error."""
    if isinstance(exc, TimeoutError | ProbeTimeout):  # asyncio's and futures' too, since 3.11
        return "timeout"
    if isinstance(exc, SwarmUnavailable) or type(exc).__name__ in _UNAVAILABLE_ERRORS:
        return "unavailable"
    return "error"


def _disarm_unclosed(server_sessions: list[Any]) -> int:
    """Mark petals server sessions whose close failed as closed.

    Petals' ``_ServerInferenceSession.close`` runs a coroutine on hivemind's RemoteExpertWorker
    event loop and blocks for it; when that coroutine raises (seen: BrokenPipeError, about one
    generation in ten on loopback), the session stays open and its ``__del__`` closes it again.
    If the garbage collector happens to run that ``__del__`` on the event-loop thread itself,
    the loop waits on itself and every later generation in this process hangs. The stream is
    dead anyway; dropping it lets the loop's async-generator finalizer clean up without blocking.
    Returns how many sessions needed it.
    """
    disarmed = 0
    for server_session in server_sessions:
        if getattr(server_session, "_outputs_stream", None) is not None:
            server_session._outputs_stream = None
            server_session._inputs_queue = None
            server_session.closed = True
            disarmed += 1
    return disarmed


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class Probe:
    """Generates ``tokens`` tokens every ``interval_s`` seconds; ``start()``/``stop()``."""

    def __init__(
        self,
        swarm: SwarmSettings,
        metrics: HealthMetrics,
        *,
        interval_s: float,
        tokens: int,
        timeout_s: float,
        prompt: str,
        open_model: OpenModel | None = None,
        join_timeout_s: float = 30.0,
    ) -> None:
        if interval_s <= 0 or timeout_s <= 0 or tokens < 2:
            raise ValueError(
                f"Probe(interval_s={interval_s!r}, timeout_s={timeout_s!r}, tokens={tokens!r}): "
                "intervals must be positive and tokens at least 2"
            )
        swarm.require_initial_peers()
        swarm.require_trusted_servers()  # the probe must never route through strangers
        self._swarm = swarm
        self._metrics = metrics
        self.interval_s = interval_s
        self._tokens = tokens
        self._timeout_s = timeout_s
        self._prompt = prompt
        if open_model is None:
            from client.petals_model import open_distributed_model

            open_model = open_distributed_model
        self._open_model = open_model
        self._join_timeout_s = join_timeout_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._model_lock = threading.Lock()
        self._model_stack: contextlib.ExitStack | None = None
        self._model: Any = None
        self._tokenizer: Any = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Probe in the background; the first generation starts at once."""
        if self._thread is not None:
            raise RuntimeError("Probe already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="petals-health-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop probing and close the distributed model (its DHT process and p2pd).

        A generation in progress stops at its next token; one stuck in an RPC is cut off by
        closing the model under it.
        """
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self._join_timeout_s / 2)
            if thread.is_alive():
                log.warning("probe still busy; closing its model to interrupt it")
                self._close_model()
                thread.join(self._join_timeout_s / 2)
                if thread.is_alive():
                    log.warning("probe thread did not stop within %.0f s", self._join_timeout_s)
        self._close_model()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                started = time.monotonic()
                self.run_once()
                remaining = self.interval_s - (time.monotonic() - started)
                if self._stopping.wait(max(0.0, remaining)):
                    break
        finally:
            self._close_model()

    # -- one probe ----------------------------------------------------------------------------
    def run_once(self) -> bool:
        """One probe generation on the calling thread, reported to the metrics; True if it
        succeeded. Nothing is reported when the service stops meanwhile."""
        self._metrics.probe_started()
        try:
            ttft_s, tokens_per_s = self._generate()
        except ProbeCancelled:
            self._metrics.probe_abandoned()
            return False
        except Exception as exc:
            if self._stopping.is_set():
                self._metrics.probe_abandoned()
                return False  # closing the model under a generation makes it fail: not news
            reason = classify_failure(exc)
            detail = _describe(exc)
            log.warning("probe failed (%s): %s", reason, detail)
            self._metrics.probe_failed(reason, detail)
            self._close_model()  # start from a fresh client next time
            # Sessions abandoned by petals' retries may hold dead streams: finalize them on this
            # thread rather than on hivemind's event loop (see _disarm_unclosed).
            gc.collect()
            return False
        self._metrics.observe_probe(ttft_s, tokens_per_s)
        log.info("probe: first token after %.3f s, %.1f tokens/s", ttft_s, tokens_per_s)
        return True

    def _generate(self) -> tuple[float, float]:
        from client.generation import stream_generate

        deadline = time.monotonic() + self._timeout_s
        model, tokenizer = self._ensure_model()
        if self._stopping.is_set():
            raise ProbeCancelled
        input_ids = tokenizer(self._prompt, return_tensors="pt").input_ids

        def should_cancel() -> bool:
            return self._stopping.is_set() or time.monotonic() > deadline

        # An explicit session, so that its server sessions can be checked once it is closed.
        with model.inference_session(max_length=input_ids.shape[1] + self._tokens) as session:
            try:
                result = stream_generate(
                    model,
                    tokenizer,
                    input_ids,
                    max_new_tokens=self._tokens,
                    min_new_tokens=self._tokens,  # an early EOS would leave nothing to time
                    should_cancel=should_cancel,
                    session=session,
                )
            finally:
                server_sessions = list(getattr(session, "_server_sessions", ()))
        if _disarm_unclosed(server_sessions):
            gc.collect()  # finalize other leftovers here, not on the event-loop thread
        if result.stopped_by == "cancelled":
            if self._stopping.is_set():
                raise ProbeCancelled
            raise ProbeTimeout(
                f"{len(result.token_ids)} of {self._tokens} tokens after {self._timeout_s:g} s"
            )
        ttft_s, tokens_per_s = result.time_to_first_token_s, result.tokens_per_second
        if ttft_s is None or tokens_per_s is None:
            raise RuntimeError(
                f"generation returned {len(result.token_ids)} tokens; the probe needs at least 2"
            )
        return ttft_s, tokens_per_s

    def _ensure_model(self) -> tuple[Any, Any]:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self._swarm.model)
        with self._model_lock:
            model = self._model
        if model is None:
            # Before anything imports petals (open_distributed_model imports it first thing):
            # petals 2.2 cannot import on hivemind 1.1.12 without the kit's compat layer.
            import swarm.compat  # noqa: F401

            # Opened without the lock held (joining the swarm takes seconds), so that stop()
            # never waits for it; a model that arrives after stop() is closed here.
            stack = contextlib.ExitStack()
            model = stack.enter_context(
                self._open_model(
                    self._swarm,
                    max_retries=PROBE_MAX_RETRIES,
                    max_backoff=PROBE_MAX_BACKOFF_S,
                    show_route=False,
                )
            )
            with self._model_lock:
                keep = not self._stopping.is_set()
                if keep:
                    self._model, self._model_stack = model, stack
            if not keep:
                stack.close()
                raise ProbeCancelled
        return model, self._tokenizer

    def _close_model(self) -> None:
        with self._model_lock:
            stack, self._model_stack, self._model = self._model_stack, None, None
        if stack is not None:
            try:
                stack.close()
            except Exception:
                log.warning("closing the probe's distributed model failed", exc_info=True)
