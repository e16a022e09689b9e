"""Tiny Llamas made offline and reproducibly, for the demo and the tests.

Two flavours, both with grouped-query attention and a byte-level tokenizer (every UTF-8 byte is a
token, so any text round-trips), saved with a ``tokenizer.json``:
- "tiny" (``DEFAULT_SPEC``): eight blocks, hidden 64, 4 heads / 2 KV heads, plain rope, a chat
  template in StableBeluga2's ``### User:`` style.
- "tiny-llama3" (``LLAMA3_SPEC``): shaped like Llama-3.1: four blocks, hidden 128, 4 heads / 1 KV
  head, ``rope_scaling`` rope_type "llama3" whose frequencies fall in all three bands (kept,
  blended, divided by the factor), Llama-3 special tokens and its ``<|eot_id|>`` chat template.
The weights come from a fixed seed and a short training run on text this package ships, so the
demo's answers read as words. Same parameters, same bytes: the directory name carries a hash.

Reproducible across machines: the weights are built in a child process pinned to code paths
that do not depend on the CPU (``PINNED_BUILD_ENV``: PyTorch's baseline kernels, MKL's
reproducibility mode, one thread), trained in float64 with deterministic algorithms, and rounded
to bfloat16 values (stored as float32). Measured: without the pinning, builds with AVX-512 and
with SSE kernels differed; with it, builds with MKL held to SSE4.2 and to AVX-512 are identical
(bench/tiny_reproducibility.py). tests/swarm/test_tiny_models.py records the weights' hashes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

TINY_FORMAT_VERSION = 3  # 3: trained in a child pinned to baseline kernels, float64, bf16 values

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}### System:\n{{ message['content'] }}\n\n"
    "{% elif message['role'] == 'user' %}### User:\n{{ message['content'] }}\n\n"
    "{% else %}### Assistant:\n{{ message['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2; bytes follow from id 3

# Llama-3's chat template (its tokenizer_config.json's, without the date/tool preamble of 3.1).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# As in Llama-3, the specials come after the regular vocabulary (here: the 256 bytes).
LLAMA3_SPECIAL_TOKENS = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)


@dataclass(frozen=True)
class TinySpec:
    flavour: str = "tiny"  # "tiny" (StableBeluga-style chat) or "tiny-llama3" (Llama-3.1-style)
    num_layers: int = 8
    hidden_size: int = 64
    intermediate_size: int = 176
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 1024
    rope_theta: float = 10000.0
    # Llama-3.1's rope_scaling as (factor, low_freq_factor, high_freq_factor, original_max);
    # None: plain rope.
    llama3_rope: tuple[float, float, float, int] | None = None
    seed: int = 20240611
    train_steps: int = 0
    train_seq_len: int = 64
    train_batch: int = 16
    learning_rate: float = 3e-3

    def fingerprint(self) -> str:
        payload = json.dumps({"v": TINY_FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# The demo's default: trained briefly (minutes on 2 cores, in float64) on the shipped text with a
# context long enough to see whole question/answer pairs, so greedy answers read as sentences and
# end with EOS. Tests use the same spec, so one cached directory serves both.
DEFAULT_SPEC = TinySpec(train_steps=500, train_seq_len=192, train_batch=8)
# head_dim 32 and theta 10000 give rotary wavelengths 6.3, 11, 20, 35, 63, 112, 199, 353, 628 ...
# tokens; with original_max 256, high_freq_factor 4 and low_freq_factor 1, wavelengths under 64
# keep their frequency, 112 and 199 are blended, and from 353 on they are divided by 8.
LLAMA3_SPEC = TinySpec(
    flavour="tiny-llama3",
    num_layers=4,
    hidden_size=128,
    intermediate_size=256,
    num_heads=4,
    num_kv_heads=1,
    max_positions=2048,
    llama3_rope=(8.0, 1.0, 4.0, 256),
    train_steps=400,
    train_seq_len=192,
    train_batch=8,
)
FLAVOURS = {"tiny": DEFAULT_SPEC, "tiny-llama3": LLAMA3_SPEC}


def default_cache_dir() -> Path:
    base = os.environ.get("PETALS_KIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "petals-swarm-kit"
    )
    return Path(base) / "models"


def corpus_text() -> str:
    return resources.files("swarm.models").joinpath("data/tiny_corpus.txt").read_text("utf-8")


def build_tokenizer(spec: TinySpec = DEFAULT_SPEC):  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()  # index = byte value
    if set(alphabet) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("tokenizers' ByteLevel alphabet changed; the tiny vocab needs a look")
    llama3 = spec.flavour == "tiny-llama3"
    specials: tuple[str, ...]
    if llama3:
        vocab = {char: i for i, char in enumerate(alphabet)}
        specials = LLAMA3_SPECIAL_TOKENS
        vocab.update({token: len(alphabet) + i for i, token in enumerate(specials)})
        bos, eos, pad = "<|begin_of_text|>", "<|eot_id|>", None
    else:
        specials = SPECIAL_TOKENS
        vocab = {token: i for i, token in enumerate(specials)}
        vocab.update({char: len(specials) + i for i, char in enumerate(alphabet)})
        bos, eos, pad = "<s>", "</s>", "<pad>"
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        additional_special_tokens=[t for t in specials if t not in (bos, eos, pad)],
    )
    fast.chat_template = LLAMA3_CHAT_TEMPLATE if llama3 else CHAT_TEMPLATE
    fast.model_max_length = spec.max_positions
    return fast


def _bytes_to_unicode() -> list[str]:
    # GPT-2's reversible byte -> printable character table, as the ByteLevel pre-tokenizer uses it.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _llama_config(spec: TinySpec, tokenizer):
    from transformers import LlamaConfig

    if spec.flavour == "tiny-llama3":
        ids = {"bos_token_id": tokenizer.bos_token_id, "pad_token_id": None}
        # Like Llama-3.1-Instruct: generation ends at end of text or end of turn.
        ids["eos_token_id"] = tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    else:
        ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    rope_scaling = None
    if spec.llama3_rope:
        factor, low, high, original = spec.llama3_rope
        rope_scaling = {
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": original,
            "rope_type": "llama3",
        }
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        rope_theta=spec.rope_theta,
        rope_scaling=rope_scaling,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **ids,
    )


def corpus_pairs() -> list[tuple[str, str]]:
    """The shipped (question, answer) pairs."""
    pairs = []
    for chunk in corpus_text().split("</s>"):
        if "### Assistant:" not in chunk:
            continue
        question, answer = chunk.split("### Assistant:", 1)
        pairs.append((question.replace("### User:", "", 1).strip(), answer.strip()))
    return pairs


def corpus_token_ids(spec: TinySpec, tokenizer) -> list[int]:
    """The training text as token ids, in the flavour's chat format."""
    if spec.flavour == "tiny-llama3":
        tokens: list[int] = []
        for question, answer in corpus_pairs():
            messages = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ]
            tokens += tokenizer.apply_chat_template(messages, tokenize=True)
        return tokens
    # Byte-level: a token id is the byte value + the specials. "</s>" in the text marks the end of
    # an assistant turn and becomes the EOS token, so greedy answers stop where a turn ends.
    eos = SPECIAL_TOKENS.index("</s>")
    tokens = []
    for i, piece in enumerate(corpus_text().split("</s>")):
        if i:
            tokens.append(eos)
        tokens.extend(byte + len(SPECIAL_TOKENS) for byte in piece.encode("utf-8"))
    return tokens


def _train(model, tokenizer, spec: TinySpec, progress: Callable[[str], None] | None) -> None:
    import torch

    ids = torch.tensor(corpus_token_ids(spec, tokenizer))
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, foreach=False)
    model.train()
    started = time.monotonic()
    for step in range(spec.train_steps):
        starts = torch.randint(
            0, len(ids) - spec.train_seq_len - 1, (spec.train_batch,), generator=generator
        )
        batch = torch.stack([ids[s : s + spec.train_seq_len] for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if progress and (step + 1) % 50 == 0:
            progress(
                f"training step {step + 1}/{spec.train_steps}, loss {loss.item():.2f}, "
                f"{time.monotonic() - started:.0f}s"
            )
    model.eval()


def _build_model(spec: TinySpec, tokenizer, progress: Callable[[str], None] | None):
    """Seeded init and training in float64 on one thread, then weights rounded to bfloat16
    values and stored as float32 (see the module docstring for why)."""
    import torch
    from transformers import LlamaForCausalLM

    if spec.llama3_rope:
        import swarm.compat  # noqa: F401  (transformers 4.34 needs it for rope_type llama3)

    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    default_dtype = torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.set_default_dtype(torch.float64)  # rope buffers are made in the default dtype
    try:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(_llama_config(spec, tokenizer)).double()
        if spec.train_steps:
            _train(model, tokenizer, spec, progress)
    finally:
        torch.set_default_dtype(default_dtype)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.to(torch.bfloat16).to(torch.float32)
    return model.float()


def weights_sha256(directory: str | os.PathLike[str]) -> str:
    """Hash of the saved tensors (names, dtypes, shapes, bytes), independent of file metadata."""
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(Path(directory) / "model.safetensors", framework="pt") as weights:
        for name in sorted(weights.keys()):
            tensor = weights.get_tensor(name).contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


# The build runs in a child process with these set, so every x86-64 CPU takes the same code paths:
# PyTorch's baseline kernels instead of the AVX2/AVX-512 ones it would pick for this CPU (vector
# width changes the order of sums), MKL's conditional numerical reproducibility mode (the same
# results on any Intel or AMD CPU), one thread.
PINNED_BUILD_ENV = {
    "ATEN_CPU_CAPABILITY": "default",
    "MKL_CBWR": "COMPATIBLE",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _build_in_pinned_process(
    target: Path, spec: TinySpec, progress: Callable[[str], None] | None
) -> None:
    env = {**os.environ, **PINNED_BUILD_ENV}
    argv = [sys.executable, "-m", "swarm.models.tiny", str(target), json.dumps(asdict(spec))]
    with subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        for line in child.stdout:
            if progress:
                progress(line.rstrip("\n"))
        errors = child.stderr.read()
    if child.returncode:
        raise RuntimeError(
            f"building the tiny model in {target} failed (exit {child.returncode}): "
            + errors.strip()[-2000:]
        )


def make_tiny_llama(
    directory: str | os.PathLike[str],
    spec: TinySpec = DEFAULT_SPEC,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the tiny model (safetensors + tokenizer + chat template) to ``directory``.

    Built in a temporary sibling and renamed into place, so a crash never leaves a half model.
    """
    if spec.flavour not in FLAVOURS:
        raise ValueError(f"flavour={spec.flavour!r}: accepted {', '.join(FLAVOURS)}")
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    if any(os.environ.get(key) != value for key, value in PINNED_BUILD_ENV.items()):
        _build_in_pinned_process(target, spec, progress)
        return target
    tokenizer = build_tokenizer(spec)
    model = _build_model(spec, tokenizer, progress)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(work, safe_serialization=True)
        tokenizer.save_pretrained(work)
        (work / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
        work.chmod(0o755)  # mkdtemp makes 0700; servers may run as another user
        for item in work.iterdir():
            item.chmod(0o644)
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return target


# Pinned builds of both flavours, shipped with the kit (their folder names carry the spec's
# fingerprint, so a changed spec never picks up an old build). The pinned build is bit-identical
# across instruction sets (bench/tiny_reproducibility.py) but takes minutes on 2 cores; shipping its
# output keeps every machine on the same bytes and `make test` from spending ~10 minutes on it.
PREBUILT_DIR = Path(__file__).resolve().parent / "prebuilt"


def ensure_tiny_llama(
    cache_dir: str | os.PathLike[str] | None = None,
    spec: TinySpec = DEFAULT_SPEC,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The cached tiny model for ``spec``: the shipped pinned build when there is one for this spec,
    otherwise made once (its directory name carries the spec hash)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    stem = "tiny-llama" if spec.flavour == "tiny" else spec.flavour
    target = root / f"{stem}-{spec.fingerprint()}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Several processes (parallel test sessions, a demo) may ask at once: one builds, others wait.
    with open(root / ".tiny-llama.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").is_file():
            return target
        shipped = PREBUILT_DIR / target.name
        if (shipped / "model.safetensors").is_file():
            if progress:
                progress(f"copying the shipped tiny model to {target}")
            return _copy_prebuilt(shipped, target)
        if progress:
            progress(f"making the tiny Llama in {target} (once; a few minutes)")
        return make_tiny_llama(target, spec, progress)


def _copy_prebuilt(shipped: Path, target: Path) -> Path:
    """Copy a shipped build next to ``target`` first, then rename it into place (atomic)."""
    work = target.with_name(f".{target.name}.copy-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(shipped, work)
    work.rename(target)
    return target


def _main(argv: list[str]) -> int:
    """``python -m swarm.models.tiny DIR SPEC_JSON``: the pinned child of make_tiny_llama."""
    directory, spec_json = argv
    fields = json.loads(spec_json)
    if fields.get("llama3_rope") is not None:
        fields["llama3_rope"] = tuple(fields["llama3_rope"])
    make_tiny_llama(directory, TinySpec(**fields), progress=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
