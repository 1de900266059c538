"""The offline demo models: ids, chat template, determinism, idempotence and SNAC frame sizes."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch

from oai_server.codec import orpheus
from oai_server.engines.demo import DemoModels, build_demo_models

WEIGHT_FILES = (
    "llm/model.safetensors",
    "tts/model.safetensors",
    "snac/pytorch_model.bin",
    "tts/tokenizer.json",
)


@pytest.fixture(scope="session")
def demo(demo_models: DemoModels) -> DemoModels:
    """The session's demo models (built once by `conftest.demo_models`)."""
    return demo_models


@pytest.fixture(scope="module")
def tts_tokenizer(demo: DemoModels):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo.tts_dir)


@pytest.fixture(scope="module")
def chat_tokenizer(demo: DemoModels):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo.llm_dir)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_orpheus_tokenizer_matches_orpheus_ids(tts_tokenizer) -> None:
    ids = tts_tokenizer("tara: Hello there!").input_ids
    assert ids[0] == 128000
    assert all(i < 128000 for i in ids[1:])
    assert tts_tokenizer.decode(ids[1:]) == "tara: Hello there!"
    assert len(tts_tokenizer) == orpheus.ORPHEUS_VOCAB_SIZE
    assert tts_tokenizer.convert_tokens_to_ids("<|eot_id|>") == orpheus.END_OF_TEXT
    assert tts_tokenizer.convert_tokens_to_ids("<|audio|>") == orpheus.ORPHEUS_VOCAB_SIZE - 1
    for n, token_id in (
        (1, orpheus.START_OF_SPEECH),
        (2, orpheus.END_OF_SPEECH),
        (3, orpheus.START_OF_HUMAN),
    ):
        assert tts_tokenizer.convert_tokens_to_ids(f"<custom_token_{n}>") == token_id
    assert tts_tokenizer.decode([orpheus.AUDIO_TOKEN_BASE]) == "<custom_token_10>"
    last_audio = orpheus.AUDIO_TOKEN_END - 1
    assert tts_tokenizer.decode([last_audio]) == f"<custom_token_{last_audio - 128256}>"
    # Every id exists (gaps are placeholders), so any id decodes.
    assert tts_tokenizer.convert_ids_to_tokens([5000, 128100, orpheus.ORPHEUS_VOCAB_SIZE - 2])[0]


def test_orpheus_model_config(demo: DemoModels) -> None:
    config = json.loads((demo.tts_dir / "config.json").read_text())
    assert config["vocab_size"] == orpheus.ORPHEUS_VOCAB_SIZE
    assert (config["bos_token_id"], config["eos_token_id"]) == (128000, 128001)
    assert config["tie_word_embeddings"] is True
    assert config["architectures"] == ["LlamaForCausalLM"]


def test_gemma_chat_template(chat_tokenizer, demo: DemoModels) -> None:
    messages = [
        {"role": "user", "content": "  Hi there \n"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell me a story."},
    ]
    text = chat_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nHi there<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nTell me a story.<end_of_turn>\n<start_of_turn>model\n"
    )
    with pytest.raises(Exception, match="System role not supported"):
        chat_tokenizer.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)
    with pytest.raises(Exception, match="alternate"):
        chat_tokenizer.apply_chat_template(messages[:1] * 2, tokenize=False)
    config = json.loads((demo.llm_dir / "config.json").read_text())
    eos, eot = chat_tokenizer.convert_tokens_to_ids(["<eos>", "<end_of_turn>"])
    assert config["eos_token_id"] == [eos, eot]
    assert config["architectures"] == ["Gemma2ForCausalLM"]
    assert (config["attn_logit_softcapping"], config["final_logit_softcapping"]) == (50.0, 30.0)
    assert chat_tokenizer("hi").input_ids[0] == chat_tokenizer.bos_token_id


def test_snac_decodes_four_frames_to_8192_samples(demo: DemoModels) -> None:
    from snac import SNAC

    model = SNAC.from_pretrained(str(demo.snac_dir))
    codes = [torch.tensor([[0, 4095, 7, 9]]), torch.randint(0, 4096, (1, 8)), torch.randint(0, 4096, (1, 16))]
    with torch.inference_mode():
        audio = model.decode(codes)
    assert audio.shape == (1, 1, 4 * orpheus.SAMPLES_PER_FRAME)
    assert bool(torch.isfinite(audio).all()) and float(audio.abs().max()) <= 1.0


def test_build_is_idempotent(demo: DemoModels) -> None:
    """A second build finds the finished one: same paths, nothing rewritten, no temp directory left behind."""
    cache = demo.llm_dir.parent.parent
    before = {name: (demo.llm_dir.parent / name).stat().st_mtime_ns for name in WEIGHT_FILES}
    again = build_demo_models(cache)
    assert again == demo
    assert before == {name: (demo.llm_dir.parent / name).stat().st_mtime_ns for name in WEIGHT_FILES}
    assert not [p for p in cache.iterdir() if ".tmp-" in p.name]


def test_racing_builds_are_safe_and_deterministic(demo: DemoModels, tmp_path: Path) -> None:
    results: list[DemoModels] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(build_demo_models(tmp_path))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(results) == 2 and results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [demo.llm_dir.parent.name]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    for name in WEIGHT_FILES:
        assert _sha(results[0].llm_dir.parent / name) == _sha(demo.llm_dir.parent / name), name
