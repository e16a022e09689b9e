"""Let petals 2.2.0.post1 run on hivemind 1.1.12. Apply it before anything imports petals.

Inside a function write ``import swarm.compat`` then the statement ``swarm.compat.apply()`` and
only then ``from petals import ...``: a bare ``import swarm.compat`` line next to the petals import
gets sorted below it by isort/ruff (first-party after third-party), and petals then fails.

Why it exists: the only Petals release on PyPI (2.2.0.post1) pins hivemind 1.1.10.post2, whose
source build downloads the p2pd binary from GitHub (impossible offline) and which needs pydantic<2.
hivemind 1.1.12 ships a manylinux wheel with p2pd inside, but it stopped re-exporting at top level
the names petals imports (``from hivemind import PeerID, get_logger, anext, ...``).
This module puts those names back into the ``hivemind`` namespace; nothing in hivemind or petals is
patched beyond that, except: ``swarm.compat_llama3`` (Llama-3.1/3.3 rope for transformers
4.34.1) patches two transformers Llama methods; ``swarm.compat_exit`` makes petals' inference
sessions close without ever hanging a process (at exit, or against a hung server); and every
p2pd starts with NAT port mapping off.

bitsandbytes (0.50.2 here, for its CUDA 13 library): petals' ``convert_block`` (Linear8bitLt,
Int8Params, LinearNF4, Params4bit) works on it unchanged, on CUDA and on bitsandbytes' CPU
backend, so nothing is bridged for it. Known gap, deliberately not bridged: LoRA adapters
(``run_server --adapters``, which the kit never passes) wrap int8 layers with peft 0.5.0's
``lora.Linear8bitLt``, which passes ``memory_efficient_backward=`` that bitsandbytes has removed
(TypeError). Bridging it would mean importing bitsandbytes (~3 s) in every process.

When it can go: once a Petals release on PyPI depends on a hivemind with a Linux p2pd wheel
(Petals' GitHub main already pins a newer hivemind by commit), delete this module and its imports.
"""

from __future__ import annotations

import builtins
import importlib
import pkgutil
import types

# Packages whose modules' public names hivemind <= 1.1.10 re-exported from the top-level package
# (hivemind 1.1.12's own hivemind.utils/__init__ no longer lists e.g. BatchTensorDescriptor).
_REEXPORTED_PACKAGES = ("hivemind.p2p", "hivemind.utils", "hivemind.compression")
_REEXPORTED_MODULES = ("hivemind.moe.server.runtime",)  # petals uses hivemind.Runtime

_applied = False


def _public_names(module: types.ModuleType) -> dict[str, object]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    return {name: getattr(module, name) for name in names if hasattr(module, name)}


def apply() -> None:
    """Re-export the names petals expects at hivemind's top level. Idempotent."""
    global _applied
    if _applied:
        return
    import hivemind

    modules: list[types.ModuleType] = []
    for package_name in _REEXPORTED_PACKAGES:
        package = importlib.import_module(package_name)
        modules.append(package)
        for info in pkgutil.iter_modules(package.__path__, prefix=package_name + "."):
            modules.append(importlib.import_module(info.name))
    modules += [importlib.import_module(name) for name in _REEXPORTED_MODULES]

    added: dict[str, object] = {}
    for module in modules:
        for name, value in _public_names(module).items():
            if isinstance(value, types.ModuleType) and not value.__name__.startswith("hivemind"):
                continue  # stdlib/third-party modules imported by hivemind are not its API
            added.setdefault(name, value)
    # `anext` has been a builtin since Python 3.10; petals imports it from hivemind.
    added.setdefault("anext", builtins.anext)
    for name, value in added.items():
        if not hasattr(hivemind, name):
            setattr(hivemind, name, value)
    _apply_llama3_rope()
    _no_nat_port_map()
    _applied = True
    _apply_exit_patches()  # imports petals, so only once hivemind has the names petals needs


def _apply_exit_patches() -> None:
    """Closing petals' inference sessions never hangs a process (see swarm/compat_exit.py)."""
    from swarm import compat_exit

    compat_exit.apply()


def _no_nat_port_map() -> None:
    """Start every p2pd of this process with NAT port mapping off.

    hivemind's ``P2P.create`` defaults to ``nat_port_map=True``: p2pd then asks the router
    (UPnP/NAT-PMP) to forward the swarm port from outside, which a private swarm on a university
    network must never do. Neither petals' CLIs nor its client expose the option, and one process
    creates several P2P instances (a server's DHT and reachability probe, a client's DHT), so the
    default is replaced at the source for every process that imports petals through this module.
    """
    from hivemind.p2p import P2P

    if getattr(P2P.create, "_kit_private", False):
        return
    create = P2P.create.__func__

    async def create_private(cls: type, *args: object, **kwargs: object) -> object:
        kwargs["nat_port_map"] = False
        return await create(cls, *args, **kwargs)

    create_private._kit_private = True  # type: ignore[attr-defined]
    P2P.create = classmethod(create_private)


def _apply_llama3_rope() -> None:
    """Llama-3.1/3.3's rope_scaling for transformers 4.34.1 (see swarm/compat_llama3.py)."""
    from swarm import compat_llama3

    compat_llama3.apply()


apply()
