"""Write random-weight models with the exact architectures of Orpheus-3B, Gemma-2-2B-it, Whisper-large-v3-turbo.

For speed tests on a GPU without downloading the real weights: same layer shapes, vocab,
rope/softcap settings and dtype (bf16), so vLLM runs the same kernels at the same cost.
Weights are ``randn * 0.02`` (norm weights neutral), filled on the target device after building
the model on ``meta``, so a 3B model is written in seconds on a GPU.

Tokenizers are written beside the weights, with vocabularies exactly as large as the models':

* Gemma: ids 0..3 ``<pad> <eos> <bos> <unk>``, 106/107 ``<start_of_turn>``/``<end_of_turn>``,
  byte-level tokens after that, then decode-only filler words up to 256 000 (every id decodes
  to text, some with a full stop, so a random-weight chat still feeds the sentence segmenter).
  Chat template: `oai_server.engines.demo.GEMMA_CHAT_TEMPLATE`.
* Orpheus: byte-level tokens at 0..255, filler words up to 127 999, Llama-3 specials at
  128000..128255 (128000 BOS, 128001 end of text, 128009 eot), ``<custom_token_N>`` = 128256+N.
* Whisper (large-v3-turbo): see `write_whisper_processor` (51866 ids, Whisper's special tokens, a
  128-bin feature extractor and Whisper's generation config beside the weights).

    python bench/build_random_models.py --out /tmp/rand --which both|all|whisper [--tiny] [--device cuda]

``--tiny`` keeps vocabularies and token layouts but shrinks every other dimension (CPU smoke test).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oai_server.codec import orpheus

GEMMA_VOCAB = 256000
GEMMA_SPECIALS = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    106: "<start_of_turn>",
    107: "<end_of_turn>",
}
_SYLLABLES = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]  # 75 syllables


def _byte_level_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def _filler_word(n: int) -> str:
    """A unique pronounceable byte-level token (leading space = 'Ġ'); every 12th ends a sentence."""
    parts = []
    n_left = n
    while True:
        parts.append(_SYLLABLES[n_left % len(_SYLLABLES)])
        n_left //= len(_SYLLABLES)
        if n_left == 0:
            break
    return "Ġ" + "".join(parts) + ("." if n % 12 == 11 else "")


def _tokenizer_json(vocab_size: int, specials: dict[int, str], bytes_start: int, bos: str) -> str:
    """A byte-level BPE (no merges: encoding is per byte) with every id up to ``vocab_size``."""
    vocab: dict[str, int] = {}
    next_id = bytes_start
    for char in _byte_level_alphabet():
        vocab[char] = next_id
        next_id += 1
    filler = 0
    added = []
    for token_id in range(vocab_size):
        if token_id in specials:
            content = specials[token_id]
            added.append(
                {
                    "id": token_id,
                    "content": content,
                    "single_word": False,
                    "lstrip": False,
                    "rstrip": False,
                    "normalized": False,
                    "special": True,
                }
            )
            vocab[content] = token_id
        elif bytes_start <= token_id < bytes_start + 256:
            continue
        else:
            word = _filler_word(filler)
            filler += 1
            vocab[word] = token_id
    assert len(vocab) == vocab_size, (len(vocab), vocab_size)
    data: dict[str, Any] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": bos, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [],
        },
    }
    return json.dumps(data, ensure_ascii=False)


def write_gemma_tokenizer(out: Path) -> None:
    """Gemma-2 id layout (see module docstring) with Gemma's chat template."""
    from tokenizers import Tokenizer

    from oai_server.engines.demo import gemma_tokenizer

    gemma_tokenizer(Tokenizer.from_str(_tokenizer_json(GEMMA_VOCAB, GEMMA_SPECIALS, 108, "<bos>"))).save_pretrained(out)


def write_orpheus_tokenizer(out: Path) -> None:
    """Orpheus id layout: Llama-3 specials at 128000.., ``<custom_token_N>`` at 128256+N."""
    from tokenizers import Tokenizer

    from oai_server.engines.demo import orpheus_tokenizer

    named = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128009: "<|eot_id|>"}
    specials = {i: named.get(i, f"<|reserved_special_token_{i - 128000}|>") for i in range(128000, 128256)}
    specials.update({i: f"<custom_token_{i - 128256}>" for i in range(128256, orpheus.ORPHEUS_VOCAB_SIZE)})
    raw = Tokenizer.from_str(_tokenizer_json(orpheus.ORPHEUS_VOCAB_SIZE, specials, 0, "<|begin_of_text|>"))
    orpheus_tokenizer(raw).save_pretrained(out)


WHISPER_TEXT_TOKENS = 50257
"""Whisper's byte-level text vocabulary (ids 0..50256); its special tokens follow from 50257."""
WHISPER_MELS = 128
"""large-v3 and large-v3-turbo take 128 mel bins (earlier Whisper sizes: 80)."""


def write_whisper_processor(out: Path) -> Any:
    """A byte-level `WhisperTokenizer` with Whisper v3's id layout, a 128-bin feature extractor, and the
    generation config (``lang_to_id``, ``task_to_id``, ...); returns the tokenizer.

    Ids 0..255 are the byte alphabet, 256..50256 decode-only filler words, then Whisper's special tokens in
    Whisper's order (``<|endoftext|>`` 50257, ``<|startoftranscript|>`` 50258, 100 languages, the task and
    ``<|notimestamps|>`` tokens up to 50364) and the 1501 timestamp tokens: 51866 ids, as large-v3's.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    from oai_server.engines.demo_whisper import generation_config, special_tokens, timestamp_tokens

    vocab = {char: i for i, char in enumerate(_byte_level_alphabet())}
    filler = 0
    while len(vocab) < WHISPER_TEXT_TOKENS:
        vocab[_filler_word(filler)] = len(vocab)
        filler += 1
    specials = special_tokens()
    tokenizer = WhisperTokenizer(
        vocab=vocab, merges=[], unk_token=specials[0], bos_token=specials[0], eos_token=specials[0],
        pad_token=specials[0], extra_special_tokens=specials[1:],
    )  # fmt: skip
    tokenizer.add_tokens(timestamp_tokens())
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == WHISPER_TEXT_TOKENS
    assert len(tokenizer) == WHISPER_VOCAB, len(tokenizer)
    extractor = WhisperFeatureExtractor(feature_size=WHISPER_MELS, sampling_rate=16000)
    WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    generation_config(tokenizer).save_pretrained(out)
    return tokenizer


WHISPER_VOCAB = 51866


def whisper_config(tiny: bool) -> Any:
    """whisper-large-v3-turbo shapes (32 encoder / 4 decoder layers, d_model 1280, 128 mels); ``tiny``
    shrinks all but the vocab, the mel bins and the 30 s / 448-token windows."""
    from transformers import WhisperConfig

    size = (
        {"d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}
        if tiny
        else {"d_model": 1280, "encoder_layers": 32, "decoder_layers": 4, "encoder_attention_heads": 20,
              "decoder_attention_heads": 20, "encoder_ffn_dim": 5120, "decoder_ffn_dim": 5120}
    )  # fmt: skip
    eot, sot = WHISPER_TEXT_TOKENS, WHISPER_TEXT_TOKENS + 1
    return WhisperConfig(
        vocab_size=WHISPER_VOCAB,
        num_mel_bins=WHISPER_MELS,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=sot,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
        dtype="bfloat16",
        **size,
    )


def orpheus_config(tiny: bool) -> Any:
    """Orpheus-3B (Llama-3.2-3B) shapes; ``tiny`` shrinks all but the vocab."""
    from transformers import LlamaConfig

    size = (
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "intermediate_size": 128,
        }
        if tiny
        else {
            "hidden_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 24,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "intermediate_size": 8192,
        }
    )
    return LlamaConfig(
        vocab_size=orpheus.ORPHEUS_VOCAB_SIZE,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=True,
        dtype="bfloat16",
        **size,
    )


def gemma_config(tiny: bool) -> Any:
    """Gemma-2-2B shapes; ``tiny`` shrinks all but the vocab."""
    from transformers import Gemma2Config

    size = (
        {
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "intermediate_size": 128,
            "query_pre_attn_scalar": 32,
        }
        if tiny
        else {
            "hidden_size": 2304,
            "num_hidden_layers": 26,
            "num_attention_heads": 8,
            "num_key_value_heads": 4,
            "head_dim": 256,
            "intermediate_size": 9216,
            "query_pre_attn_scalar": 256,
        }
    )
    return Gemma2Config(
        vocab_size=GEMMA_VOCAB,
        max_position_embeddings=8192,
        hidden_activation="gelu_pytorch_tanh",
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=[1, 107],
        tie_word_embeddings=True,
        dtype="bfloat16",
        **size,
    )


def write_random_model(model_cls: Any, config: Any, out: Path, device: torch.device, norm_fill: float) -> int:
    """Build on ``meta``, materialise on ``device`` in bf16, fill, save as safetensors; returns #params."""
    from transformers import GenerationConfig

    with torch.device("meta"):
        model = model_cls(config).to(torch.bfloat16)
    model.to_empty(device=device)
    model.tie_weights()
    generator = torch.Generator(device=device).manual_seed(0)
    total = 0
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights are listed once
            if "norm" in name:
                param.fill_(norm_fill)
            else:
                param.normal_(0.0, 0.02, generator=generator)
            total += param.numel()
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    model.save_pretrained(out)
    return total


WHICH = {"both": ("orpheus", "gemma"), "all": ("orpheus", "gemma", "whisper")}


def build(which: str, out: Path, tiny: bool, device: torch.device) -> None:
    """Write the requested model directories under ``out`` (``orpheus/``, ``gemma/``, ``whisper/``)."""
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM, WhisperForConditionalGeneration

    jobs = {
        # Llama RMSNorm scales by w (neutral 1); Gemma's by (1 + w) (neutral 0); Whisper's LayerNorm by w.
        "orpheus": (LlamaForCausalLM, orpheus_config, write_orpheus_tokenizer, 1.0),
        "gemma": (Gemma2ForCausalLM, gemma_config, write_gemma_tokenizer, 0.0),
        # The processor also rewrites generation_config.json with Whisper's (language and task ids).
        "whisper": (WhisperForConditionalGeneration, whisper_config, write_whisper_processor, 1.0),
    }
    for name in WHICH.get(which, (which,)):
        model_cls, make_config, write_tokenizer, norm_fill = jobs[name]
        target = out / name
        start = time.perf_counter()
        params = write_random_model(model_cls, make_config(tiny), target, device, norm_fill)
        write_tokenizer(target)
        print(
            f"{name}: {params / 1e9:.3f}B params -> {target} in {time.perf_counter() - start:.1f}s",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--which", choices=("orpheus", "gemma", "whisper", "both", "all"), default="both")
    parser.add_argument("--tiny", action="store_true", help="shrink every dimension but the vocab")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    build(args.which, args.out, args.tiny, torch.device(args.device))


if __name__ == "__main__":
    main()
