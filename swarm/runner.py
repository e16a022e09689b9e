"""Entry point of the child processes the kit launches: ``python -m swarm.runner server|dht ...``.

Petals' CLI modules are imported and their ``main()`` called (never run with runpy: hivemind
pickles functions by module name, and functions defined in ``__main__`` do not survive that).
``swarm.compat`` is imported first so petals can import on hivemind 1.1.12.

A private swarm makes no calls outside: petals' server asks PyPI for the latest petals release at
every start (``validate_version``); the runner replaces that with a log line of the version, and
the launcher always passes ``--skip_reachability_check`` (petals' check calls a public service)
and a fixed ``--throughput`` (otherwise petals runs an internet speed test). Every p2pd the
process starts runs without NAT port mapping (``swarm.compat`` turns it off for every P2P instance).
"""

from __future__ import annotations

import logging
import os
import sys
import traceback

ENTRY_POINTS = {
    "server": "petals.cli.run_server",
    "dht": "petals.cli.run_dht",
}


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ENTRY_POINTS:
        print(
            f"usage: python -m swarm.runner {{{','.join(ENTRY_POINTS)}}} ARGS...", file=sys.stderr
        )
        raise SystemExit(2)
    import importlib
    import signal

    # A child of a background job inherits SIGINT ignored (POSIX), and Python then installs no
    # KeyboardInterrupt handler; petals shuts down gracefully (announcing OFFLINE) only on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # If our supervisor dies without stopping us (SIGKILL, a crashed test run), end our whole
    # process group rather than live on as orphans holding ports. Under systemd the unit's
    # cgroup is killed anyway; this covers the demo, the tests and hand-started servers.
    from swarm.process import end_group_when_orphaned

    end_group_when_orphaned()

    import swarm.compat  # noqa: F401  (must precede petals)

    module = importlib.import_module(ENTRY_POINTS[args[0]])
    if hasattr(module, "validate_version"):
        import petals
        from hivemind.utils.logging import get_logger

        version = petals.__version__

        def _log_version_only() -> None:
            get_logger("swarm.runner").info(f"Running Petals {version} (private: no update check)")

        module.validate_version = _log_version_only  # type: ignore[attr-defined]
    sys.argv = [ENTRY_POINTS[args[0]], *args[1:]]
    code = 0
    try:
        module.main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        code = 0
    except BaseException:
        traceback.print_exc()
        code = 1
    # Petals' server returns from main() after announcing OFFLINE and shutting its container
    # down, but its runtime and task-pool threads are not daemons and can block the interpreter's
    # exit indefinitely (seen: minutes in threading._shutdown). Exit now; the supervisor sweeps
    # what is left of the process group.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
