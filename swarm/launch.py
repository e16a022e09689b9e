"""Command lines for the swarm's processes, and starting them as supervised process trees.

``bootstrap_argv``/``server_argv`` are pure: settings in, petals arguments out, with every flag that
keeps a private swarm private (explicit initial peers, no reachability check against a public
service, a fixed throughput instead of an internet speed test, no auto relay). ``start_*`` run them
via ``swarm.runner`` in their own process groups (see ``swarm.process``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from swarm.addresses import parse_multiaddr
from swarm.errors import ConfigError, ModelError
from swarm.process import ManagedProcess
from swarm.swarm_settings import SwarmSettings


@dataclass(frozen=True)
class BlockRange:
    start: int
    end: int  # exclusive

    def __str__(self) -> str:
        return f"{self.start}:{self.end}"

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))


def parse_block_range(text: str, num_blocks: int) -> BlockRange:
    """``"START:END"`` (END exclusive) within ``[0, num_blocks]``; ConfigError otherwise."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"block range {text!r} is not START:END, e.g. 0:{min(num_blocks, 20)}")
    start, end = int(parts[0]), int(parts[1])
    if not 0 <= start < end <= num_blocks:
        raise ConfigError(
            f"block range {text!r} is outside the model: it has {num_blocks} blocks, so ranges "
            f"must lie within 0:{num_blocks} with START < END"
        )
    return BlockRange(start, end)


def is_local_model(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).exists()


def model_num_blocks(model: str) -> int:
    """Number of transformer blocks of a local model dir or a known model name."""
    if is_local_model(model):
        config = Path(model).expanduser() / "config.json"
        if not Path(model).expanduser().is_dir():
            raise ModelError(f"model directory {model!r} does not exist")
        try:
            data = json.loads(config.read_text())
        except FileNotFoundError:
            raise ModelError(f"model directory {model!r} has no config.json") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read {str(config)!r}: {exc}") from None
        layers = data.get("num_hidden_layers") or data.get("n_layer")
        if not isinstance(layers, int) or layers <= 0:
            raise ModelError(f"{str(config)!r} has no positive num_hidden_layers")
        return layers
    from swarm.modelspecs import lookup

    try:
        return lookup(model).num_layers
    except ModelError as unknown:
        # Not one of the kit's known targets: ask the Hub for its config (needs the network).
        try:
            from transformers import AutoConfig

            config = AutoConfig.from_pretrained(model)
        except Exception as exc:
            raise ModelError(
                f"{unknown}; fetching its config from the Hugging Face Hub failed too "
                f"({type(exc).__name__}). Use a local model directory where there is no network"
            ) from None
        layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
        if not isinstance(layers, int) or layers <= 0:
            raise ModelError(
                f"model {model!r}: its config has no positive num_hidden_layers"
            ) from None
        return layers


def _maddrs(values: list[str], field: str) -> list[str]:
    return [str(parse_multiaddr(v, field=field)) for v in values]


def bootstrap_argv(
    *,
    identity_path: Path,
    host_maddrs: list[str],
    announce_maddrs: list[str] | None = None,
    initial_peers: list[str] | None = None,
) -> list[str]:
    """Arguments of petals.cli.run_dht for a bootstrap peer of a private swarm.

    With no initial peers it starts a new DHT (the first bootstrap peer); a second bootstrap peer
    lists the first. Relays are off: a private swarm has direct routes.
    """
    argv = ["--identity_path", str(identity_path), "--no_relay"]
    argv += ["--host_maddrs", *_maddrs(host_maddrs, "host_maddrs")]
    if announce_maddrs:
        argv += ["--announce_maddrs", *_maddrs(announce_maddrs, "announce_maddrs")]
    if initial_peers:
        argv += ["--initial_peers", *initial_peers]
    return argv


def server_argv(
    settings: SwarmSettings,
    *,
    blocks: BlockRange,
    identity_path: Path,
    throughput: float,
    public_name: str | None = None,
    update_period: float = 60.0,
    attn_cache_tokens: int | None = None,
    cache_dir: Path | None = None,
    device: str | None = None,
) -> list[str]:
    """Arguments of petals.cli.run_server for one server of the private swarm."""
    if throughput <= 0:
        raise ConfigError(f"throughput {throughput!r} must be a positive number (tokens/s)")
    argv = [
        settings.model,
        "--dht_prefix", settings.effective_dht_prefix,
        "--initial_peers", *settings.require_initial_peers(),
        "--block_indices", str(blocks),
        "--identity_path", str(identity_path),
        "--throughput", str(throughput),
        "--torch_dtype", settings.torch_dtype,
        "--quant_type", settings.quant_type,
        "--host_maddrs", *settings.host_maddrs,
        "--update_period", str(update_period),
        "--request_timeout", str(settings.request_timeout),
        "--skip_reachability_check",
        "--no_auto_relay",
    ]  # fmt: skip
    if settings.announce_maddrs:
        argv += ["--announce_maddrs", *settings.announce_maddrs]
    if public_name:
        argv += ["--public_name", public_name]
    if attn_cache_tokens:
        argv += ["--attn_cache_tokens", str(attn_cache_tokens)]
    if cache_dir:
        argv += ["--cache_dir", str(cache_dir)]
    if device:
        argv += ["--device", device]
    return argv


def record_lifetime(update_period: float) -> float:
    """Seconds a server's DHT record lives after it is stored: petals' server uses
    ``max(2 * update_period, MAX_DHT_TIME_DISCREPANCY_SECONDS)`` (3 s in hivemind) unless
    ``--expiration`` is given, which the kit never passes."""
    return max(2 * update_period, 3.0)


def child_env(model: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    if is_local_model(model):
        env.setdefault("HF_HUB_OFFLINE", "1")  # a local dir never needs the hub
    return env


def runner_command(kind: str, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "swarm.runner", kind, *argv]


def start_bootstrap(name: str, argv: list[str], log_path: Path | None = None) -> ManagedProcess:
    return ManagedProcess(name, runner_command("dht", argv), log_path=log_path).start()


def start_server(
    name: str, argv: list[str], model: str, log_path: Path | None = None
) -> ManagedProcess:
    return ManagedProcess(
        name, runner_command("server", argv), env=child_env(model), log_path=log_path
    ).start()
