"""`VLLMWhisper` against a double of vLLM 0.26.0's `AsyncLLM` (vLLM cannot run on this CPU machine).

The double checks what the recognizer sends (the encoder/decoder prompt shape measured on the GPU,
shared/gpu/README.md; sampling kwargs; the language-detection request) and plays back deltas shaped
like vLLM's ``RequestOutput``. The real engine runs in `bench/asr_vllm_smoke.py` on a GPU.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from oai_server.engines.asr import TranscriptionParams, TranscriptPiece
from oai_server.engines.asr_vllm import VLLMWhisper, whisper_prompt
from oai_server.engines.base import EngineError, EngineInfo
from oai_server.engines.demo_whisper import build_demo_whisper

AUDIO = np.zeros(16000, np.float32)
EOT = 600


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class Output:
    outputs: list[Completion]
    finished: bool


class FakeWhisperLLM:
    """Plays ``script`` (text, ids) deltas for a transcription; the last one finishes on <|endoftext|>."""

    def __init__(self, script: list[tuple[str, list[int]]], detected: int, *, error: bool = False) -> None:
        self.script = script
        self.detected = detected
        self.error = error
        self.calls: list[tuple[dict[str, Any], dict[str, Any], str]] = []
        self.closed_early: list[str] = []
        self.shutdowns = 0

    async def generate(self, prompt: dict[str, Any], params: dict[str, Any], request_id: str) -> AsyncIterator[Output]:
        self.calls.append((prompt, params, request_id))
        if prompt["decoder_prompt"] == "<|startoftranscript|>":
            yield Output([Completion("", [self.detected], "length")], True)
            return
        finished = False
        try:
            for i, (text, ids) in enumerate(self.script):
                last = i + 1 == len(self.script)
                if last and self.error:
                    yield Output([Completion("", [], "error")], True)
                else:
                    reason = "stop" if last else None
                    yield Output([Completion(text, ids + ([EOT] if last else []), reason)], last)
            finished = True
        finally:
            if not finished:
                self.closed_early.append(request_id)  # vLLM's generate aborts the request here

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        self.shutdowns += 1


SCRIPT = [(" Hello", [11]), (" there", [12, 13]), (" friend", [14])]


@pytest.fixture(scope="module")
def whisper_dir(demo_cache: Path) -> Path:
    return build_demo_whisper(demo_cache)


async def make(whisper_dir: Path, double: FakeWhisperLLM) -> tuple[VLLMWhisper, list[dict[str, Any]]]:
    engine_args: list[dict[str, Any]] = []

    def factory(kwargs: dict[str, Any]) -> FakeWhisperLLM:
        engine_args.append(kwargs)
        return double

    engine = await VLLMWhisper.create(
        str(whisper_dir),
        gpu_memory_utilization=0.12,
        max_num_seqs=32,
        engine_factory=factory,
        sampling_params_factory=lambda kwargs: kwargs,
    )
    return engine, engine_args


async def collect(stream: AsyncIterator[TranscriptPiece]) -> list[TranscriptPiece]:
    return [piece async for piece in stream]


def test_prompt_shape_is_the_one_measured_on_vllm() -> None:
    prompt = whisper_prompt(AUDIO, "en")
    assert prompt["decoder_prompt"] == "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>"
    assert prompt["encoder_prompt"]["prompt"] == ""
    audio, rate = prompt["encoder_prompt"]["multi_modal_data"]["audio"]
    assert audio is AUDIO and rate == 16000
    with_prompt = whisper_prompt(AUDIO, "de", "translate", "  earlier words ")
    assert with_prompt["decoder_prompt"] == (
        "<|startofprev|> earlier words<|startoftranscript|><|de|><|translate|><|notimestamps|>"
    )


async def test_create_passes_whisper_engine_args_and_language_ids(whisper_dir: Path) -> None:
    from transformers import WhisperTokenizer

    engine, engine_args = await make(whisper_dir, FakeWhisperLLM(SCRIPT, 0))
    kwargs = engine_args[0]
    assert kwargs["max_model_len"] == 448 and kwargs["gpu_memory_utilization"] == 0.12
    assert kwargs["limit_mm_per_prompt"] == {"audio": 1} and kwargs["max_num_seqs"] == 32
    assert kwargs["renderer_num_workers"] == 4
    tokenizer = WhisperTokenizer.from_pretrained(whisper_dir)
    assert len(engine.languages) == 100 and "en" in engine.languages
    assert engine._language_ids["de"] == tokenizer.convert_tokens_to_ids("<|de|>")
    assert engine.info.kind == "vllm-whisper" and engine.info.max_model_len == 448
    await engine.close()
    await engine.close()
    assert engine._engine.shutdowns == 1


async def test_deltas_language_and_the_stop_token_not_counted(whisper_dir: Path) -> None:
    double = FakeWhisperLLM(SCRIPT, 0)
    engine, _ = await make(whisper_dir, double)
    pieces = await collect(engine.transcribe(AUDIO, TranscriptionParams(language="en", max_tokens=50), "r1"))
    assert [(p.text, p.tokens, p.language) for p in pieces] == [
        (" Hello", 1, "en"),
        (" there", 2, None),
        (" friend", 1, None),  # vLLM's token_ids end with <|endoftext|>: not a transcript token
    ]
    prompt, params, request_id = double.calls[0]
    assert request_id == "r1" and prompt["decoder_prompt"].startswith("<|startoftranscript|><|en|>")
    assert params["max_tokens"] == 50 and params["temperature"] == 0.0 and params["skip_special_tokens"]
    assert engine.active_requests() == 0 and not double.closed_early


async def test_language_is_detected_with_one_constrained_token(whisper_dir: Path) -> None:
    from transformers import WhisperTokenizer

    french = WhisperTokenizer.from_pretrained(whisper_dir).convert_tokens_to_ids("<|fr|>")
    double = FakeWhisperLLM(SCRIPT, french)
    engine, _ = await make(whisper_dir, double)
    pieces = await collect(engine.transcribe(AUDIO, TranscriptionParams(prompt="context"), "r2"))
    assert pieces[0].language == "fr"
    (detect_prompt, detect_params, detect_id), (prompt, _, _) = double.calls
    assert detect_prompt["decoder_prompt"] == "<|startoftranscript|>" and detect_id == "r2-lang"
    assert detect_params["max_tokens"] == 1 and detect_params["temperature"] == 0.0
    assert sorted(detect_params["allowed_token_ids"]) == sorted(engine._language_ids.values())
    assert (
        prompt["decoder_prompt"] == "<|startofprev|> context<|startoftranscript|><|fr|><|transcribe|><|notimestamps|>"
    )


async def test_closing_the_iterator_aborts_in_vllm(whisper_dir: Path) -> None:
    double = FakeWhisperLLM(SCRIPT, 0)
    engine, _ = await make(whisper_dir, double)
    stream = engine.transcribe(AUDIO, TranscriptionParams(language="en"), "r3")
    assert (await anext(stream)).text == " Hello"
    assert engine.active_requests() == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert double.closed_early == ["r3"]
    assert engine.active_requests() == 0


async def test_errors(whisper_dir: Path) -> None:
    engine, _ = await make(whisper_dir, FakeWhisperLLM(SCRIPT, 0, error=True))
    with pytest.raises(EngineError, match="error"):
        await collect(engine.transcribe(AUDIO, TranscriptionParams(language="en"), "r4"))
    with pytest.raises(EngineError, match="not supported"):
        await collect(engine.transcribe(AUDIO, TranscriptionParams(language="xx"), "r5"))
    with pytest.raises(EngineError, match="30 s"):
        await collect(engine.transcribe(np.zeros(31 * 16000, np.float32), TranscriptionParams(language="en"), "r6"))
    assert engine.active_requests() == 0


class RendererDouble:
    """vLLM's renderer as `VLLMWhisper` uses it: `render_cmpl_async` of parsed prompts, in worker threads."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.threads: list[int] = []

    def _render(self, prompt: dict[str, Any]) -> dict[str, Any]:
        self.threads.append(threading.get_ident())
        if self.fail:
            raise ValueError("the audio could not be processed")
        return {"type": "enc_dec", "rendered": prompt}

    async def render_cmpl_async(self, prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [await asyncio.to_thread(self._render, prompt) for prompt in prompts]


class RenderingWhisperLLM(FakeWhisperLLM):
    """An AsyncLLM double with a renderer: `generate` must get rendered inputs, never raw prompts."""

    model_config = "the engine's model config"

    def __init__(self, *args: Any, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.renderer = RendererDouble(fail)

    async def generate(self, prompt: dict[str, Any], params: dict[str, Any], request_id: str) -> AsyncIterator[Output]:
        assert prompt["type"] == "enc_dec", "a raw prompt reached generate: vLLM would render it on the event loop"
        async for output in super().generate(prompt["rendered"], params, request_id):
            yield output


async def test_prompts_are_rendered_off_the_event_loop(whisper_dir: Path) -> None:
    double = RenderingWhisperLLM(SCRIPT, 0)
    parsed: list[Any] = []

    def parse(model_config: Any, prompt: dict[str, Any]) -> dict[str, Any]:
        parsed.append(model_config)
        return prompt

    engine = VLLMWhisper(
        double, make_info(), {"en": 0}, sampling_params_factory=lambda kwargs: kwargs, prompt_parser=parse
    )
    pieces = await collect(engine.transcribe(AUDIO, TranscriptionParams(), "r7"))  # language detected, then transcribed
    assert [p.text for p in pieces] == [" Hello", " there", " friend"] and pieces[0].language == "en"
    assert [call[0]["decoder_prompt"] for call in double.calls] == [
        "<|startoftranscript|>",
        "<|startoftranscript|><|en|><|transcribe|><|notimestamps|>",
    ]
    assert parsed == ["the engine's model config"] * 2
    loop_thread = threading.get_ident()
    assert len(double.renderer.threads) == 2 and loop_thread not in double.renderer.threads


async def test_a_prompt_vllm_cannot_render_is_an_engine_error(whisper_dir: Path) -> None:
    double = RenderingWhisperLLM(SCRIPT, 0, fail=True)
    engine = VLLMWhisper(
        double, make_info(), {"en": 0}, sampling_params_factory=lambda kwargs: kwargs, prompt_parser=lambda c, p: p
    )
    with pytest.raises(EngineError, match=r"could not prepare the audio.*could not be processed"):
        await collect(engine.transcribe(AUDIO, TranscriptionParams(language="en"), "r8"))
    assert engine.active_requests() == 0 and not double.calls


def make_info() -> EngineInfo:
    return EngineInfo(kind="vllm-whisper", model="whisper", max_model_len=448)
