"""Offline demo speech recognizer: a tiny, deterministic random-weight Whisper.

`build_demo_whisper` writes (once, into a cache dir) a `WhisperForConditionalGeneration` with
Whisper's real input layout (16 kHz, 80 mel bins, 30 s windows = 3000 frames, 1500 encoder
positions, 448 decoder positions) but tiny widths, a byte-level BPE `WhisperTokenizer` with
Whisper's special tokens in Whisper's order (``<|endoftext|>``, ``<|startoftranscript|>``, the
100 language tokens, ``<|translate|>``, ``<|transcribe|>``, ``<|startoflm|>``, ``<|startofprev|>``,
``<|nospeech|>``, ``<|notimestamps|>``, then the 1501 timestamp tokens ``<|0.00|>``..``<|30.00|>``),
a `WhisperFeatureExtractor` and a generation config (``lang_to_id``, ``task_to_id``, ...), all
saved in one directory that `transformers` (and vLLM) load offline.

Weights are random but fixed by seed, so every build is byte-identical. The transcripts are
gibberish; a bias channel (as in `oai_server.engines.demo`) makes the decoder prefer word pieces and end
with ``<|endoftext|>`` after a few words, so every code path (prompt, language, streaming,
stop) behaves like the real model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .demo import _is_word, _train_bpe, build_once

DEMO_WHISPER_VERSION = "demo-whisper-v1"
_SEED = 20240613
N_MELS = 80
SAMPLE_RATE = 16000
_INIT_STD = 0.3
"""Weight scale: large enough that the decoder's choices depend on the audio, not only on the bias."""
_BIAS = 4.0
"""Size of the bias channel (channel 0) in the decoder's final layer norm."""
_EOT_STRENGTH = 1.05
"""``<|endoftext|>``'s share of the bias channel, relative to the word pieces' 1.0."""
_EOT_RAMP = 1.5
"""Slope per decoder position of the end channel (channel 1): greedy transcripts end within ~30 tokens."""


def build_demo_whisper(cache_dir: Path) -> Path:
    """Return the demo Whisper directory under ``cache_dir``, building it first if needed (`demo.build_once`)."""
    return build_once(cache_dir, DEMO_WHISPER_VERSION, _build_seeded)


def _build_seeded(directory: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        _build_whisper(directory)


def special_tokens() -> list[str]:
    """Whisper's special tokens in Whisper's id order (multilingual v3 layout, 100 languages)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in LANGUAGES),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ]


def timestamp_tokens() -> list[str]:
    """``<|0.00|>`` .. ``<|30.00|>`` in 20 ms steps (1501 tokens, after the special tokens)."""
    return [f"<|{i * 0.02:.2f}|>" for i in range(1501)]


def whisper_tokenizer(vocab_size: int = 600) -> Any:
    """A byte-level BPE `WhisperTokenizer` (trained on the demo corpus) with Whisper's special tokens."""
    from transformers import WhisperTokenizer

    data = json.loads(_train_bpe(vocab_size, []).to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in data["model"]["merges"]]
    specials = special_tokens()
    tokenizer = WhisperTokenizer(vocab=data["model"]["vocab"], merges=merges, extra_special_tokens=specials[1:])
    tokenizer.add_tokens(timestamp_tokens())
    return tokenizer


def generation_config(tokenizer: Any) -> Any:
    """Whisper's generation config (`lang_to_id`, `task_to_id`, ...) for `tokenizer`'s ids."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    def tid(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    eot = tid("<|endoftext|>")
    return GenerationConfig(
        decoder_start_token_id=tid("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=448,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": tid(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")},
        no_timestamps_token_id=tid("<|notimestamps|>"),
        prev_sot_token_id=tid("<|startofprev|>"),
        max_initial_timestamp_index=50,
        return_timestamps=False,
        suppress_tokens=[],
        begin_suppress_tokens=[tid("Ġ"), eot],
    )


def _build_whisper(out: Path) -> None:
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    tokenizer = whisper_tokenizer()
    WhisperProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=N_MELS, sampling_rate=SAMPLE_RATE),
        tokenizer=tokenizer,
    ).save_pretrained(out)
    gen = generation_config(tokenizer)
    eot = int(gen.eos_token_id)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=N_MELS,
        encoder_layers=2,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        d_model=64,
        init_std=_INIT_STD,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=gen.decoder_start_token_id,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )
    model = WhisperForConditionalGeneration(config)
    words = [i for i in range(len(tokenizer)) if _is_word(tokenizer.convert_ids_to_tokens(i) or "")]
    decoder = model.get_decoder()
    with torch.no_grad():
        # A constant channel 0 in the decoder output (its final layer norm's bias) times the (tied)
        # embedding's channel 0 lifts word pieces and, a little more, <|endoftext|> over the rest.
        embedding = decoder.embed_tokens.weight
        embedding[:, :2] = 0.0
        embedding[words, 0] = 1.0
        embedding[eot, 0] = _EOT_STRENGTH
        decoder.layer_norm.weight[0] = 0.0
        decoder.layer_norm.bias[0] = _BIAS
        # Channel 1 grows with the decoder position and only <|endoftext|> reads it: random weights
        # fall into loops under greedy decoding, and this ends every loop after a few dozen tokens.
        embedding[eot, 1] = 1.0
        positions = decoder.embed_positions.weight
        positions[:, 1] = _EOT_RAMP * torch.arange(positions.shape[0], dtype=positions.dtype)
        decoder.layer_norm.weight[1] = 1.0
        decoder.layer_norm.bias[1] = 0.0
    model.generation_config = gen
    model.save_pretrained(out)
