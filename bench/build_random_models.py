"""Write random-weight models with the exact architectures of Orpheus-3B and Gemma-2-2B-it.

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

    python bench/build_random_models.py --out /tmp/rand --which both [--tiny] [--device cuda]

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


def build(which: str, out: Path, tiny: bool, device: torch.device) -> None:
    """Write the requested model directories under ``out`` (``orpheus/``, ``gemma/``)."""
    from transformers import Gemma2ForCausalLM, LlamaForCausalLM

    jobs = {
        # Llama RMSNorm scales by w (neutral 1); Gemma's by (1 + w) (neutral 0).
        "orpheus": (LlamaForCausalLM, orpheus_config, write_orpheus_tokenizer, 1.0),
        "gemma": (Gemma2ForCausalLM, gemma_config, write_gemma_tokenizer, 0.0),
    }
    for name in ("orpheus", "gemma") if which == "both" else (which,):
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
    parser.add_argument("--which", choices=("orpheus", "gemma", "both"), default="both")
    parser.add_argument("--tiny", action="store_true", help="shrink every dimension but the vocab")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    build(args.which, args.out, args.tiny, torch.device(args.device))


if __name__ == "__main__":
    main()
