"""A tiny Llama made offline and reproducibly, for the demo and the tests.

Eight Llama blocks with hidden size 64 and grouped-query attention (4 heads, 2 KV heads, like the
70B targets' 64/8), a byte-level tokenizer (every UTF-8 byte is a token, so any text round-trips)
and a chat template in StableBeluga2's ``### User:`` style. The weights come from a fixed seed
and, optionally, a short deterministic training run on text this package ships, so the demo's
answers read as words. Same parameters, same bytes: the directory name carries a hash of them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

TINY_FORMAT_VERSION = 1

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


@dataclass(frozen=True)
class TinySpec:
    num_layers: int = 8
    hidden_size: int = 64
    intermediate_size: int = 176
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 1024
    seed: int = 20240611
    train_steps: int = 0
    train_seq_len: int = 64
    train_batch: int = 16
    learning_rate: float = 3e-3

    def fingerprint(self) -> str:
        payload = json.dumps({"v": TINY_FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# The demo's default: trained briefly (about a minute on 2 cores) on the shipped text with a
# context long enough to see whole question/answer pairs, so greedy answers read as sentences and
# end with EOS. Tests use the same spec, so one cached directory serves both.
DEFAULT_SPEC = TinySpec(train_steps=500, train_seq_len=192, train_batch=8)


def default_cache_dir() -> Path:
    base = os.environ.get("PETALS_KIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "petals-swarm-kit"
    )
    return Path(base) / "models"


def corpus_text() -> str:
    return resources.files("swarm.models").joinpath("data/tiny_corpus.txt").read_text("utf-8")


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = _bytes_to_unicode()  # index = byte value
    if set(alphabet) != set(pre_tokenizers.ByteLevel.alphabet()):
        raise RuntimeError("tokenizers' ByteLevel alphabet changed; the tiny vocab needs a look")
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({char: len(SPECIAL_TOKENS) + i for i, char in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = TinySpec().max_positions
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


def _llama_config(spec: TinySpec, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_positions,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )


def _train(model, tokenizer, spec: TinySpec, progress: Callable[[str], None] | None) -> None:
    import torch

    # Byte-level: a token id is the byte value + the specials. "</s>" in the text marks the end of
    # an assistant turn and becomes the EOS token, so greedy answers stop where a turn ends.
    eos = SPECIAL_TOKENS.index("</s>")
    tokens: list[int] = []
    for i, piece in enumerate(corpus_text().split("</s>")):
        if i:
            tokens.append(eos)
        tokens.extend(byte + len(SPECIAL_TOKENS) for byte in piece.encode("utf-8"))
    ids = torch.tensor(tokens)
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate)
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


def make_tiny_llama(
    directory: str | os.PathLike[str],
    spec: TinySpec = DEFAULT_SPEC,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write the tiny model (safetensors + tokenizer + chat template) to ``directory``.

    Built in a temporary sibling and renamed into place, so a crash never leaves a half model.
    """
    import torch
    from transformers import LlamaForCausalLM

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    # Deterministic CPU math: one thread, deterministic kernels, fixed seed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(spec.seed)
        model = LlamaForCausalLM(_llama_config(spec, len(tokenizer)))
        if spec.train_steps:
            _train(model, tokenizer, spec, progress)
    finally:
        torch.set_num_threads(threads)
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


def ensure_tiny_llama(
    cache_dir: str | os.PathLike[str] | None = None,
    spec: TinySpec = DEFAULT_SPEC,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """The cached tiny model for ``spec``, made once (its directory name carries the spec hash)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / f"tiny-llama-{spec.fingerprint()}"
    if (target / "model.safetensors").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Several processes (parallel test sessions, a demo) may ask at once: one builds, others wait.
    with open(root / ".tiny-llama.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "model.safetensors").is_file():
            return target
        if progress:
            progress(f"making the tiny Llama in {target} (once; about a minute)")
        return make_tiny_llama(target, spec, progress)
