"""RemoteEngine against a real OpenAI-compatible upstream on a loopback socket (uvicorn, vLLM's shape)."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from oai_server.codec import orpheus
from oai_server.engines.base import (
    EngineError,
    EngineInfo,
    EngineOverloadedError,
    SamplingParams,
    TokenEngine,
)
from oai_server.engines.demo import DemoModels
from oai_server.engines.loading import load_tokenizer
from oai_server.engines.remote import CUSTOM_TOKEN_BASE, RemoteEngine, RemoteEngineConfig, _TextDecoder
from oai_server.engines.transformers_engine import TransformersEngine

from .helpers import eventually as _eventually
from .upstream_server import UpstreamFaults, create_upstream_app, serve_in_thread

MODEL = "orpheus-test"
PROMPT = orpheus.build_prompt_ids([1, 2, 3, 4])
STOP = orpheus.STOP_TOKEN_IDS


class ScriptedEngine:
    """A deterministic `TokenEngine`: Orpheus audio ids drawn from (prompt, seed), `delay` s apart."""

    def __init__(self) -> None:
        self.info = EngineInfo(kind="scripted", model=MODEL, max_model_len=4096)
        self.delay = 0.0
        self.stop_after: int | None = None
        self._active: set[str] = set()

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        self._active.add(request_id)
        try:
            rng = random.Random(f"{list(prompt_token_ids)}/{params.seed}")
            for k in range(params.max_tokens):
                if self.stop_after is not None and k == self.stop_after and params.stop_token_ids:
                    return
                await asyncio.sleep(self.delay)
                yield [orpheus.slot_band(k)[rng.randrange(orpheus.CODEBOOK_SIZE)]]
        finally:
            self._active.discard(request_id)

    async def abort(self, request_id: str) -> None:
        self._active.discard(request_id)

    async def check_health(self) -> None:
        return None

    def active_requests(self) -> int:
        return len(self._active)

    async def close(self) -> None:
        return None


class CustomTokenTokenizer:
    """Renders ids >= 128256 as ``<custom_token_N>`` like Orpheus's tokenizer; other ids as ``[id]``."""

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return "".join(
            f"<custom_token_{t - CUSTOM_TOKEN_BASE}>" if t >= CUSTOM_TOKEN_BASE else f"[{t}]" for t in token_ids
        )

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, ScriptedEngine, object]]:
    engine = ScriptedEngine()
    app = create_upstream_app(engine, CustomTokenTokenizer(), model=MODEL)
    app.state.api_key = "sk-upstream"
    with serve_in_thread(app) as base_url:
        yield base_url, engine, app


@pytest.fixture
def scripted(upstream: tuple[str, ScriptedEngine, object]) -> Iterator[tuple[str, ScriptedEngine, object]]:
    _, engine, app = upstream
    app.state.faults = UpstreamFaults()  # type: ignore[attr-defined]
    app.state.received.clear()  # type: ignore[attr-defined]
    engine.delay, engine.stop_after = 0.0, None
    yield upstream


def make_remote(base_url: str, **overrides: object) -> RemoteEngine:
    settings: dict[str, object] = {
        "base_url": base_url,
        "model": MODEL,
        "api_key": "sk-upstream",
        "read_timeout": 5.0,
        "backoff_seconds": 0.01,
        **overrides,
    }
    return RemoteEngine(RemoteEngineConfig(**settings), tokenizer=None)  # type: ignore[arg-type]


def params(max_tokens: int = 21, **kw: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, seed=7, stop_token_ids=STOP, orpheus_audio_slots=True, **kw)  # type: ignore[arg-type]


async def collect(stream: AsyncIterator[list[int]]) -> list[list[int]]:
    return [delta async for delta in stream]


async def eventually(predicate: object, timeout: float = 5.0) -> None:
    assert await _eventually(predicate, timeout), "condition not reached in time"  # type: ignore[arg-type]


@pytest.mark.parametrize("text_only", [False, True], ids=["token_ids", "text"])
async def test_streams_the_direct_engines_ids(scripted, text_only: bool) -> None:
    base_url, engine, app = scripted
    app.state.faults.omit_token_ids = text_only
    app.state.faults.tokens_per_chunk = 3  # several ids (several <custom_token_N>) per delta
    direct = [t for d in await collect(engine.generate(PROMPT, params(repetition_penalty=1.3), "direct-1")) for t in d]
    remote = make_remote(base_url)
    try:
        deltas = await collect(remote.generate(PROMPT, params(repetition_penalty=1.3, min_tokens=14), "req-1"))
    finally:
        await remote.close()
    assert [t for d in deltas for t in d] == direct and len(direct) == 21
    assert [len(d) for d in deltas] == [3] * 7
    body, headers = app.state.received[0]["body"], app.state.received[0]["headers"]
    assert body["prompt"] == PROMPT and body["return_token_ids"] is True and body["stream"] is True
    assert body["vllm_xargs"] == {"orpheus_audio_slots": 1}
    assert body["repetition_penalty"] == 1.3 and body["stop_token_ids"] == list(STOP) and body["min_tokens"] == 14
    assert body["top_k"] == -1 and body["skip_special_tokens"] is False and body["seed"] == 7
    assert headers["x-request-id"] == "req-1" and headers["authorization"] == "Bearer sk-upstream"


async def test_stop_id_returned_by_upstream_is_not_yielded(scripted) -> None:
    base_url, engine, _ = scripted
    engine.stop_after = 10
    remote = make_remote(base_url)
    try:
        ids = [t for d in await collect(remote.generate(PROMPT, params(100), "req-stop")) for t in d]
    finally:
        await remote.close()
    assert len(ids) == 10 and orpheus.END_OF_SPEECH not in ids
    assert remote.active_requests() == 0


def test_text_decoder_parses_every_token_and_holds_split_ones() -> None:
    decoder = _TextDecoder(None)
    assert decoder.feed("<custom_token_1><custom_token_22><custom_tok") == [
        CUSTOM_TOKEN_BASE + 1,
        CUSTOM_TOKEN_BASE + 22,
    ]
    assert decoder.feed("en_4096>x<custom_token_7") == [CUSTOM_TOKEN_BASE + 4096]
    assert decoder.feed("> <") == [CUSTOM_TOKEN_BASE + 7]
    assert decoder.flush() == []


@pytest.mark.parametrize("how", ["aclose", "cancel", "abort"])
async def test_leaving_mid_stream_aborts_the_upstream_request(scripted, how: str) -> None:
    base_url, engine, _ = scripted
    engine.delay = 0.01
    remote = make_remote(base_url)
    stream = remote.generate(PROMPT, params(5000), f"req-{how}")
    got: list[list[int]] = []

    async def consume() -> None:
        async for delta in stream:
            got.append(delta)

    try:
        if how == "aclose":
            got.append(await anext(stream))
            await eventually(lambda: engine.active_requests() == 1)
            await stream.aclose()  # type: ignore[attr-defined]
        else:
            task = asyncio.create_task(consume())
            await eventually(lambda: len(got) >= 3)
            if how == "cancel":
                task.cancel()
            else:
                await remote.abort(f"req-{how}")
            await asyncio.wait([task])
            assert task.cancelled() == (how == "cancel")  # abort ends the iterator without an error
        assert remote.active_requests() == 0
        await eventually(lambda: engine.active_requests() == 0)  # the disconnect reached the engine
        assert 0 < len(got) < 100
    finally:
        await remote.close()


async def test_retries_503_before_the_stream_then_succeeds(scripted) -> None:
    base_url, _, app = scripted
    app.state.faults.statuses_before_stream = [503, 429]
    app.state.faults.retry_after = "0"
    remote = make_remote(base_url)
    try:
        ids = [t for d in await collect(remote.generate(PROMPT, params(), "req-retry")) for t in d]
    finally:
        await remote.close()
    assert len(ids) == 21
    assert [r["headers"]["x-request-id"] for r in app.state.received] == ["req-retry"] * 3


async def test_gives_up_on_persistent_overload_and_never_retries_client_errors(scripted) -> None:
    base_url, _, app = scripted
    app.state.faults.statuses_before_stream = [503] * 3
    remote = make_remote(base_url, max_retries=2)
    try:
        with pytest.raises(EngineOverloadedError, match="injected 503"):
            await collect(remote.generate(PROMPT, params(), "req-overload"))
        assert len(app.state.received) == 3
        app.state.received.clear()
        wrong_model = make_remote(base_url, model="nope")
        with pytest.raises(EngineError, match="does not exist") as info:
            await collect(wrong_model.generate(PROMPT, params(), "req-404"))
        await wrong_model.close()
        assert not isinstance(info.value, EngineOverloadedError) and len(app.state.received) == 1
    finally:
        await remote.close()


async def test_mid_stream_error_is_raised_and_not_retried(scripted) -> None:
    base_url, engine, app = scripted
    app.state.faults.error_after_chunks = 2
    remote = make_remote(base_url)
    got: list[list[int]] = []
    try:
        with pytest.raises(EngineError, match="injected mid-stream failure"):
            async for delta in remote.generate(PROMPT, params(100), "req-mid"):
                got.append(delta)
    finally:
        await remote.close()
    assert len(got) == 2 and len(app.state.received) == 1
    await eventually(lambda: engine.active_requests() == 0)


async def test_stalled_stream_times_out(scripted) -> None:
    base_url, engine, app = scripted
    app.state.faults.stall_after_chunks = 2
    remote = make_remote(base_url, read_timeout=0.3)
    got: list[list[int]] = []
    try:
        with pytest.raises(EngineError, match=r"stalled for 0\.3s"):
            async for delta in remote.generate(PROMPT, params(100), "req-stall"):
                got.append(delta)
    finally:
        await remote.close()
    assert len(got) == 2 and len(app.state.received) == 1  # the chunks before the silence, not retried
    await eventually(lambda: engine.active_requests() == 0)


async def test_connect_errors_are_retried_then_reported() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    remote = make_remote(f"http://127.0.0.1:{port}", max_retries=2, connect_timeout=0.5)
    try:
        with pytest.raises(EngineError, match="cannot reach"):
            await collect(remote.generate(PROMPT, params(), "req-down"))
        with pytest.raises(EngineError, match="unreachable"):
            await remote.check_health()
    finally:
        await remote.close()


async def test_health_checks_the_upstream_and_its_model(scripted) -> None:
    base_url, _, _ = scripted
    remote = make_remote(base_url)
    assert isinstance(remote, TokenEngine)
    await remote.check_health()
    assert remote.info.max_model_len == 4096
    await remote.close()
    wrong = make_remote(base_url, model="nope")
    with pytest.raises(EngineError, match="does not serve"):
        await wrong.check_health()
    await wrong.close()


async def test_closed_engine_refuses_and_duplicate_ids_are_rejected(scripted) -> None:
    base_url, engine, _ = scripted
    engine.delay = 0.01
    remote = make_remote(base_url)
    first = remote.generate(PROMPT, params(500), "req-dup")
    await anext(first)
    with pytest.raises(EngineError, match="already in flight"):
        await collect(remote.generate(PROMPT, params(), "req-dup"))
    await remote.close()
    assert remote.active_requests() == 0
    with pytest.raises(EngineError, match="closed"):
        await collect(remote.generate(PROMPT, params(), "req-after"))
    await eventually(lambda: engine.active_requests() == 0)
    rest = await collect(first)  # closing cut the stream: what was received drains, then it ends quietly
    assert len([t for d in rest for t in d]) < 500


# --- the real demo models behind the upstream (TransformersEngine on CPU) ---------------------


@pytest.fixture(scope="module")
async def demo(demo_models: DemoModels) -> AsyncIterator[dict[str, object]]:
    tts = TransformersEngine(demo_models.tts_dir, kind="transformers-orpheus", device="cpu", max_concurrency=2)
    llm = TransformersEngine(demo_models.llm_dir, kind="transformers-gemma", device="cpu", max_concurrency=2)
    tts_tok, llm_tok = load_tokenizer(demo_models.tts_dir), load_tokenizer(demo_models.llm_dir)
    tts_app = create_upstream_app(tts, tts_tok, model="orpheus-demo")
    llm_app = create_upstream_app(llm, llm_tok, model="gemma-demo")
    with serve_in_thread(tts_app) as tts_url, serve_in_thread(llm_app) as llm_url:
        yield {"tts": (tts_url, tts, tts_tok, tts_app), "llm": (llm_url, llm, llm_tok, llm_app)}
    await tts.close()
    await llm.close()


@pytest.mark.slow
async def test_demo_orpheus_remote_equals_in_process(demo) -> None:
    url, engine, tok, app = demo["tts"]
    prompt = orpheus.build_prompt_ids(tok.encode("tara: Hello there!", add_special_tokens=True))
    p = SamplingParams(
        max_tokens=14, temperature=0.6, top_p=0.8, repetition_penalty=1.1, seed=11,
        stop_token_ids=STOP, orpheus_audio_slots=True,
    )  # fmt: skip
    direct = [t for d in await collect(engine.generate(prompt, p, "direct-orpheus")) for t in d]
    remote = make_remote(url, model="orpheus-demo", api_key=None)
    try:
        for text_only in (False, True):  # vLLM's token_ids, then <custom_token_N> text only
            app.state.faults = UpstreamFaults(omit_token_ids=text_only, tokens_per_chunk=3)
            deltas = await collect(remote.generate(prompt, p, f"remote-orpheus-{text_only}"))
            ids = [t for d in deltas for t in d]
            assert ids == direct and len(ids) == 14
            assert max(len(d) for d in deltas) == 3
    finally:
        await remote.close()
    parser = orpheus.AudioTokenParser()
    assert len(parser.feed(direct)) == 2 and parser.ignored == 0  # slots applied upstream (vllm_xargs)


@pytest.mark.slow
async def test_demo_gemma_remote_equals_in_process(demo) -> None:
    url, engine, tok, app = demo["llm"]
    messages = [{"role": "user", "content": "Tell me about the weather."}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt = tok.encode(text, add_special_tokens=False)
    stops = tuple(tok.convert_tokens_to_ids(t) for t in ("<end_of_turn>", "<eos>"))
    p = SamplingParams(max_tokens=24, temperature=0.8, top_p=0.95, seed=5, stop_token_ids=stops)
    direct = [t for d in await collect(engine.generate(prompt, p, "direct-chat")) for t in d]
    remote = RemoteEngine(RemoteEngineConfig(url, "gemma-demo"), tokenizer=tok)
    try:
        ids = [t for d in await collect(remote.generate(prompt, p, "remote-chat-1")) for t in d]
        app.state.faults = UpstreamFaults(omit_token_ids=True)
        text_ids = [t for d in await collect(remote.generate(prompt, p, "remote-chat-2")) for t in d]
    finally:
        await remote.close()
    assert ids == direct and len(ids) > 0
    # Re-encoded text deltas may split tokens differently; the text they spell is the same.
    assert tok.decode(text_ids) == tok.decode(direct)
