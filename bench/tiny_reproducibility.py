"""Do the tiny models come out bit-identical when the CPU's instruction set differs?

One machine stands in for several: each build runs in a fresh process with PyTorch's kernels
(ATEN_CPU_CAPABILITY), MKL (MKL_ENABLE_INSTRUCTIONS) and oneDNN (ONEDNN_MAX_CPU_ISA) held to one
instruction set, which changes vector widths and so the order of floating-point sums, as another
CPU would. Prints one JSON line per build (flavour, ISA, weights hash, seconds).

    python -m bench.tiny_reproducibility [--flavour tiny-llama3] [--isa default avx2 avx512]
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
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
             "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
}  # fmt: skip

_BUILD = """
import sys, torch
from swarm.models.tiny import FLAVOURS, make_tiny_llama, weights_sha256
path = make_tiny_llama(sys.argv[2], FLAVOURS[sys.argv[1]])
print(torch.backends.cpu.get_cpu_capability(), weights_sha256(path))
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
        capability, digest = out.stdout.split()[-2:]
    return {
        "flavour": flavour,
        "isa": isa,
        "aten_capability": capability,
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
