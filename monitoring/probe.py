"""The probe: what a student feels. Every interval it generates a few tokens through the kit's
client (``client.SwarmClient``, the same path the chat CLI, the gateway and the bot use) and
reports time to first token and tokens/s, or the reason it failed, to ``HealthMetrics``.

Going through the client means the probe gets what students get: routes over the trusted
servers only, and the kit's recovery (a failed or hung server is quarantined, a new route
opened and the text so far replayed; see client/failover.py), bounded by the client's settings
(``[client]`` / ``PETALS_CLIENT_*``: ``max_retries``, ``recovery_timeout``, ``token_timeout``,
``capacity_wait_timeout``). A crash the client routes around is therefore no probe failure;
the stall it caused shows in the timings and in the log. A request the client gives up on
(no trusted server left for some block, recovery budget spent) is one.

It runs on a thread of its own (generation blocks). The client, with its own DHT client, is
started once and kept; after a failure it is closed and started afresh on the next run.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from typing import TYPE_CHECKING

from client.errors import GenerationFailed
from client.params import GenerationParams
from client.settings import ClientSettings
from client.streams import CancelToken
from client.swarm_client import OpenModel, SwarmClient
from monitoring.metrics import HealthMetrics, ProbeFailureReason
from swarm.errors import SwarmUnavailable

if TYPE_CHECKING:
    from swarm.swarm_settings import SwarmSettings

log = logging.getLogger(__name__)


# Failures that mean "the swarm cannot serve", matched by class name so that this module does not
# import petals: petals' MissingBlocksError (no allowed server holds a block) and hivemind's
# ControlFailure (p2pd could not dial the server it was routed to, e.g. one that just stopped).
_UNAVAILABLE_ERRORS = frozenset({"MissingBlocksError", "ControlFailure"})


class ProbeCancelled(Exception):
    """The service is stopping; the generation in progress is abandoned, not a failure."""


class ProbeTimeout(Exception):
    """A probe generation ran past its deadline."""


def classify_failure(exc: BaseException) -> ProbeFailureReason:
    """The metric reason for a failed probe (pure): timeout, unavailable or error.

    A request the client gave up on because servers did not answer in time (its step and token
    timeouts: hung servers) is a timeout; the client's other give-ups are unavailable."""
    if isinstance(exc, TimeoutError | ProbeTimeout):  # asyncio's and futures' too, since 3.11
        return "timeout"
    if isinstance(exc, GenerationFailed) and _caused_by_timeout(exc):
        return "timeout"
    if isinstance(exc, SwarmUnavailable) or type(exc).__name__ in _UNAVAILABLE_ERRORS:
        return "unavailable"
    return "error"


def _caused_by_timeout(exc: BaseException) -> bool:
    seen: set[int] = set()
    cause = exc.__cause__
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, TimeoutError):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or getattr(cause, "cause", None)
    return False


def _describe(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


class Probe:
    """Generates ``tokens`` tokens every ``interval_s`` seconds; ``start()``/``stop()``.

    ``options``: the client's settings (default: ``ClientSettings.load()``, the ``[client]``
    table and ``PETALS_CLIENT_*`` the gateway and the bot read too). ``open_model`` stands in
    for joining the swarm (tests).
    """

    def __init__(
        self,
        swarm: SwarmSettings,
        metrics: HealthMetrics,
        *,
        interval_s: float,
        tokens: int,
        timeout_s: float,
        prompt: str,
        options: ClientSettings | None = None,
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
        self._options = options if options is not None else ClientSettings.load()
        self._open_model = open_model
        self._join_timeout_s = join_timeout_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._client_lock = threading.Lock()
        self._client: SwarmClient | None = None
        self._cancel: CancelToken | None = None  # the generation under way

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Probe in the background; the first generation starts at once."""
        if self._thread is not None:
            raise RuntimeError("Probe already started")
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="petals-health-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop probing and close the client (its DHT process and p2pd).

        A generation in progress stops at its next token; one stuck in an RPC is cut off by
        closing the client under it.
        """
        self._stopping.set()
        with self._client_lock:
            cancel = self._cancel
        if cancel is not None:
            cancel.cancel()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self._join_timeout_s / 2)
            if thread.is_alive():
                log.warning("probe still busy; closing its client to interrupt it")
                self._close_client(wait_s=1.0)
                thread.join(self._join_timeout_s / 2)
                if thread.is_alive():
                    log.warning("probe thread did not stop within %.0f s", self._join_timeout_s)
        self._close_client()

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
            self._close_client()

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
                return False  # closing the client under a generation makes it fail: not news
            reason = classify_failure(exc)
            detail = _describe(exc)
            log.warning("probe failed (%s): %s", reason, detail)
            self._metrics.probe_failed(reason, detail)
            self._close_client()  # start from a fresh client next time
            # Finalize whatever the failed generation left on this thread, not on hivemind's
            # event-loop thread (a petals session closed there waits on its own loop).
            gc.collect()
            return False
        self._metrics.observe_probe(ttft_s, tokens_per_s)
        log.info("probe: first token after %.3f s, %.1f tokens/s", ttft_s, tokens_per_s)
        return True

    def _generate(self) -> tuple[float, float]:
        deadline = time.monotonic() + self._timeout_s
        client = self._ensure_client()
        cancel = CancelToken()
        with self._client_lock:
            self._cancel = cancel
        if self._stopping.is_set():
            raise ProbeCancelled
        params = GenerationParams(
            max_new_tokens=self._tokens,
            min_new_tokens=self._tokens,  # an early EOS would leave nothing to time
        )
        # The deadline cancels the generation (it stops within a token, or once the client's
        # recovery in progress ends: that is bounded by the client's own timeouts).
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), cancel.cancel)
        timer.daemon = True
        timer.start()
        try:
            stats = client.stream(self._prompt, params, cancel=cancel).wait()
        finally:
            timer.cancel()
            with self._client_lock:
                self._cancel = None
        if stats.recoveries:
            log.warning(
                "probe: the client routed around %d failed server(s); stalls %s s",
                stats.recoveries,
                ", ".join(f"{stall:.2f}" for stall in stats.stall_s),
            )
        if stats.stop_reason == "cancelled":
            if self._stopping.is_set():
                raise ProbeCancelled
            waited = (
                f", {stats.capacity_wait_s:.0f} s of it waiting for server capacity"
                if stats.capacity_wait_s
                else ""
            )
            raise ProbeTimeout(
                f"{stats.completion_tokens} of {self._tokens} tokens after "
                f"{self._timeout_s:g} s{waited}"
            )
        ttft_s, tokens_per_s = stats.time_to_first_token_s, stats.tokens_per_second
        if ttft_s is None or tokens_per_s is None:
            raise RuntimeError(
                f"generation returned {stats.completion_tokens} tokens; the probe needs at least 2"
            )
        return ttft_s, tokens_per_s

    def _ensure_client(self) -> SwarmClient:
        with self._client_lock:
            client = self._client
        if client is None:
            # Started without the lock held (joining the swarm takes seconds), so that stop()
            # never waits for it; a client that arrives after stop() is closed here.
            client = SwarmClient(self._swarm, self._options, open_model=self._open_model)
            try:
                client.start()
            except BaseException:
                client.close()
                raise
            with self._client_lock:
                keep = not self._stopping.is_set()
                if keep:
                    self._client = client
            if not keep:
                client.close()
                raise ProbeCancelled
        return client

    def _close_client(self, wait_s: float = 30.0) -> None:
        """Close the client; a generation still running gets ``wait_s`` seconds to end first."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close(timeout=wait_s)
            except Exception:
                log.warning("closing the probe's client failed", exc_info=True)
