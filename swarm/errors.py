"""The kit's expected failures and their stable exit codes.

Every expected failure (bad input, a swarm that is not reachable, a process that would not start)
is a ``KitError``; the CLI prints ``petalctl: error: <message>`` on one line and exits with
``exit_code``. Anything else is a bug and keeps its traceback.

Exception tree::

    KitError                   exit 1   something we expected could go wrong did
    ├── ConfigError            exit 2   bad configuration or arguments (names the field and value)
    ├── IdentityError          exit 2   a peer identity file is missing, unreadable or malformed
    ├── ModelError             exit 2   a model name/dir cannot be used
    ├── SwarmUnavailable       exit 3   the private swarm cannot serve (no peers, blocks uncovered)
    └── ProcessError           exit 4   a child process (bootstrap, server) failed to start or died
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_PROCESS = 4
EXIT_INTERRUPTED = 130


class KitError(Exception):
    """An expected failure: one line for the user, a stable exit code."""

    exit_code = EXIT_FAILURE


class ConfigError(KitError):
    exit_code = EXIT_USAGE


class IdentityError(KitError):
    exit_code = EXIT_USAGE


class ModelError(KitError):
    exit_code = EXIT_USAGE


class SwarmUnavailable(KitError):
    exit_code = EXIT_UNAVAILABLE


class ProcessError(KitError):
    exit_code = EXIT_PROCESS
