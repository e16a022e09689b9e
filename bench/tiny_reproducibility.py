"""Do the tiny models come out bit-identical when the CPU's instruction set differs?

One machine stands in for several: each build runs in a fresh process with MKL
(MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA) held to one instruction set, which
changes their kernels as another CPU would. PyTorch's own kernels need no such variation: the
build pins them to the baseline ones (swarm.models.tiny.PINNED_BUILD_ENV), the same code on
every x86-64 CPU. Prints one JSON line per build (flavour, ISA, weights hash, seconds).

    python -m bench.tiny_reproducibility [--flavour tiny-llama3] [--isa sse4_2 avx512]

Measured 2026-12-02 (2 shared cores, tiny-llama3): the pinned builds with MKL held to SSE4.2 and
to AVX-512 had the same hash; before the pinning, builds with ATEN_CPU_CAPABILITY=default and
the CPU's own AVX-512 kernels did not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ISAS = {
    "sse4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2", "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"MKL_ENABLE_INSTRUCTIONS": "AVX512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}

_BUILD = """
import sys
from swarm.models.tiny import FLAVOURS, make_tiny_llama, weights_sha256
path = make_tiny_llama(sys.argv[2], FLAVOURS[sys.argv[1]])
print(weights_sha256(path))
"""


def build(flavour: str, isa: str) -> dict[str, object]:
    env = {**os.environ, **ISAS[isa]}
    with tempfile.TemporaryDirectory(prefix="tiny-repro-") as tmp:
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-c", _BUILD, flavour, os.path.join(tmp, "model")],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        digest = out.stdout.split()[-1]
    return {
        "flavour": flavour,
        "isa": isa,
        "weights_sha256": digest,
        "seconds": round(time.monotonic() - started, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavour", nargs="+", default=["tiny", "tiny-llama3"])
    parser.add_argument("--isa", nargs="+", default=list(ISAS), choices=list(ISAS))
    args = parser.parse_args()
    digests: dict[str, set[str]] = {}
    for flavour in args.flavour:
        for isa in args.isa:
            row = build(flavour, isa)
            digests.setdefault(flavour, set()).add(str(row["weights_sha256"]))
            print(json.dumps(row), flush=True)
    same = all(len(d) == 1 for d in digests.values())
    print(json.dumps({"identical_across_isas": same}), flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
