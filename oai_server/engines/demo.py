"""Offline demo profile: tiny, deterministic random-weight stand-ins for the three real models.

`build_demo_models` writes (once, into a cache dir) a Gemma-2-architecture chat model with a
byte-level BPE tokenizer and Gemma's chat template, an Orpheus-layout Llama whose vocabulary
matches Orpheus id for id (156 940 ids), and a small SNAC 24 kHz decoder. Nothing is
downloaded; the weights are random but fixed by seed, so every build is byte-identical.
The outputs are gibberish, but every code path (chat template, stop ids, audio-slot bands,
SNAC frame sizes) behaves like the real models.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from oai_server.codec import orpheus

DEMO_VERSION = "demo-v1"
_SEED = 20240611
_MARKER = "DEMO_VERSION"

GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
GEMMA_SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")

# A small built-in corpus: enough distinct words for a few hundred BPE merges.
_CORPUS = """\
Hello there! How can I help you today? I am a small voice assistant and I like to talk.
The quick brown fox jumps over the lazy dog while the sun sets behind the quiet hills.
Would you like to hear about the weather, the news, a recipe, or a short story tonight?
It is sunny and warm this morning, with a light breeze and a few clouds in the afternoon.
To make a cup of tea, boil fresh water, pour it over the leaves, and wait three minutes.
Once upon a time, a curious little robot wandered through the city looking for friends.
She opened the window, listened to the birds singing, and smiled at the bright new day.
Thank you for asking. That is a great question, and I will do my best to answer clearly.
Numbers like one, two, three, four, five, six, seven, eight, nine and ten are easy to say.
Music, books, games, travel, science and history are wonderful things to learn about.
Please speak slowly and clearly, so that everyone in the room can understand each word.
The train leaves at seven o'clock, so we should pack our bags and go to bed early.
Remember to drink water, take a walk outside, and get enough sleep every single night.
Good morning, good afternoon, good evening and good night; see you again very soon.
"""


@dataclass(frozen=True)
class DemoModels:
    """Paths of the built demo models (each a directory loadable offline)."""

    llm_dir: Path
    """Tiny Gemma-2 chat model + tokenizer (`AutoModelForCausalLM`/`AutoTokenizer`)."""
    tts_dir: Path
    """Tiny Orpheus-layout Llama + tokenizer (vocab 156 940, Orpheus ids)."""
    snac_dir: Path
    """Tiny SNAC 24 kHz config + weights (`snac.SNAC.from_pretrained(dir)`)."""


def build_demo_models(cache_dir: Path) -> DemoModels:
    """Return the demo models under ``cache_dir``, building them first if needed (`build_once`)."""
    final = build_once(cache_dir, DEMO_VERSION, _build_models)
    return DemoModels(llm_dir=final / "llm", tts_dir=final / "tts", snac_dir=final / "snac")


def build_once(cache_dir: Path, version: str, build: Callable[[Path], None]) -> Path:
    """``cache_dir / version``, filled by ``build(directory)`` first unless a finished build is there.

    Idempotent (a version marker written last), atomic (built in a temp directory, then
    `os.replace`d into place) and safe when several processes race (an exclusive `fcntl` lock file
    serialises builders; latecomers find the finished build).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / version
    if not _is_complete(final, version):
        with _exclusive_lock(cache_dir / f".{version}.lock"):
            if not _is_complete(final, version):
                _build_into(cache_dir, final, version, build)
    return final


def _is_complete(final: Path, version: str) -> bool:
    marker = final / _MARKER
    return marker.is_file() and marker.read_text().strip() == version


@contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _build_into(cache_dir: Path, final: Path, version: str, build: Callable[[Path], None]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=cache_dir))
    try:
        build(tmp)
        (tmp / _MARKER).write_text(version + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if final.exists():  # an incomplete leftover (no marker); we hold the lock
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _build_models(directory: Path) -> None:
    # fork_rng keeps the caller's global RNG untouched; the fixed seed makes builds identical.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        _build_gemma(directory / "llm")
        torch.manual_seed(_SEED + 1)
        _build_orpheus(directory / "tts")
        torch.manual_seed(_SEED + 2)
        _build_snac(directory / "snac")


def _train_bpe(vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    return tokenizer


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise RuntimeError(f"demo tokenizer lacks {token!r}")
    return token_id


def _embedding_weight(model: Any) -> torch.Tensor:
    weight = model.get_input_embeddings().weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _is_word(piece: str) -> bool:
    """Whether a byte-level vocab entry is a space-led alphabetic piece (``Ġword``)."""
    return piece.startswith("Ġ") and piece[1:].isascii() and piece[1:].isalpha()


def _text_bias(embedding: torch.Tensor, favoured: list[int], boosted: dict[int, float]) -> None:
    """Reserve hidden channel 0 as a 'bias channel' so random weights still prefer some ids.

    With random weights the logits are near-uniform; a shared positive component on channel 0
    of the (tied) embedding of ``favoured`` ids makes the output head prefer them, and
    ``boosted`` ids get their own strength (e.g. so a demo turn ends after a few words).
    """
    with torch.no_grad():
        embedding[:, 0] = 0.0
        embedding[favoured, 0] = 1.0
        for token_id, strength in boosted.items():
            embedding[token_id, 0] = strength


def _shrink_post_norms(model: torch.nn.Module, scale: float) -> None:
    # Gemma's post-attention/post-MLP norms scale by (1 + weight); shrinking them keeps
    # the bias channel dominant in the residual stream.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "post_attention_layernorm" in name or "post_feedforward_layernorm" in name:
                param.fill_(scale - 1.0)


def gemma_tokenizer(raw: Tokenizer) -> Any:
    """A fast tokenizer with Gemma's special tokens and chat template around `raw` (demo and bench models)."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    return tokenizer


def orpheus_tokenizer(raw: Tokenizer) -> Any:
    """A fast tokenizer with Orpheus's (Llama-3) special tokens around `raw` (demo and bench models)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token=f"<custom_token_{orpheus.PAD - 128256}>",
    )


def _build_gemma(out: Path) -> None:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    raw = _train_bpe(1000, list(GEMMA_SPECIAL_TOKENS))
    ids = {tok: _token_id(raw, tok) for tok in GEMMA_SPECIAL_TOKENS}
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", ids["<bos>"])]
    )
    gemma_tokenizer(raw).save_pretrained(out)

    vocab_size = raw.get_vocab_size()
    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=8192,
        sliding_window=64,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        query_pre_attn_scalar=32,
        pad_token_id=ids["<pad>"],
        bos_token_id=ids["<bos>"],
        eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
        tie_word_embeddings=True,
    )
    model = Gemma2ForCausalLM(config)
    words = [i for i in range(vocab_size) if _is_word(raw.id_to_token(i) or "")]
    # Tuned so a sampled demo reply is ~25 space-separated pieces before <end_of_turn>.
    _text_bias(_embedding_weight(model), words, {ids["<end_of_turn>"]: 1.05})
    _shrink_post_norms(model, 0.1)
    model.generation_config.eos_token_id = [ids["<eos>"], ids["<end_of_turn>"]]
    model.save_pretrained(out)


def _orpheus_tokenizer_json(text_bpe: Tokenizer) -> str:
    """Extend a small byte-level BPE to Orpheus's exact id layout (0..156 939)."""
    data: dict[str, Any] = json.loads(text_bpe.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    for i in range(len(vocab), 128000):  # ids the real Llama-3 BPE uses; unreachable here
        vocab[f"<|placeholder_{i}|>"] = i
    llama_specials = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128009: "<|eot_id|>"}
    added: list[dict[str, Any]] = []

    def add(token_id: int, content: str, special: bool) -> None:
        added.append(
            {
                "id": token_id,
                "content": content,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": not special,
                "special": special,
            }
        )

    for token_id in range(128000, 128256):
        add(token_id, llama_specials.get(token_id, f"<|reserved_special_token_{token_id - 128000}|>"), True)
    n_custom = orpheus.ORPHEUS_VOCAB_SIZE - 1 - 128256  # <custom_token_0> .. <custom_token_28682>
    for n in range(n_custom):
        add(128256 + n, f"<custom_token_{n}>", False)
    add(orpheus.ORPHEUS_VOCAB_SIZE - 1, "<|audio|>", True)
    data["added_tokens"] = added
    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
        ],
        "pair": [
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
            {"Sequence": {"id": "B", "type_id": 1}},
        ],
        "special_tokens": {
            "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]}
        },
    }
    return json.dumps(data, ensure_ascii=False)


def _build_orpheus(out: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = Tokenizer.from_str(_orpheus_tokenizer_json(_train_bpe(1000, [])))
    orpheus_tokenizer(raw).save_pretrained(out)

    config = LlamaConfig(
        vocab_size=orpheus.ORPHEUS_VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    audio = list(range(orpheus.AUDIO_TOKEN_BASE, orpheus.AUDIO_TOKEN_END))
    # Tuned so that at temperature 0.6 a demo utterance ends after ~25 frames (~2 s).
    _text_bias(_embedding_weight(model), audio, {orpheus.END_OF_SPEECH: 1.55})
    model.save_pretrained(out)


SNAC_24KHZ_CONFIG: dict[str, Any] = {
    "sampling_rate": 24000,
    "encoder_dim": 48,
    "encoder_rates": [2, 4, 8, 8],
    "decoder_dim": 1024,
    "decoder_rates": [8, 8, 4, 2],
    "attn_window_size": None,
    "codebook_size": 4096,
    "codebook_dim": 8,
    "vq_strides": [4, 2, 1],
    "noise": True,
    "depthwise": True,
}
"""hubertsiuzdak/snac_24khz's config.json."""

SNAC_DEMO_CONFIG: dict[str, Any] = {**SNAC_24KHZ_CONFIG, "encoder_dim": 8, "decoder_dim": 64}
"""The real layout (rates, strides, codebooks: 2048 samples per frame) with small widths."""


def write_random_snac(out: Path, config: dict[str, Any]) -> None:
    """Write a random-weight SNAC as `config.json` + `pytorch_model.bin` (loadable offline)."""
    from snac import SNAC

    model = SNAC(**config)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    torch.save(model.state_dict(), out / "pytorch_model.bin")


def _build_snac(out: Path) -> None:
    out.mkdir(parents=True)
    write_random_snac(out, SNAC_DEMO_CONFIG)
