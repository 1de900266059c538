"""What a speech request's text costs the server's event loop before it reaches the engine: `split_text` and the
Orpheus prompt's tokenization, the way the server does them now against the way it did before session 33, and the
route's own body and dependencies, FastAPI's handler against `routes/direct_body.DirectBodyRoute` (session 34).

Before: every input went through the sentence segmenter, and the prompt through the Hugging Face wrapper's `encode`
(one text sent through `encode_batch`, a `BatchEncoding` built around it). Now input that fits one piece skips the
segmenter, and the prompt goes to the Rust tokenizer directly (`codec/tokenizer.direct_encoder`, which checks that
it gives the wrapper's ids). The route: a request for the speech and the chat endpoint's signatures (the JSON body
model, the request, `Depends(services)`) through the ASGI app, to an endpoint that answers at once, under each
route class. A burst of N requests pays N times this on the one event loop before the last one's
engine request is made (session 33: ~0.73 ms of server CPU a request in all on a 2-core CPU, `bench/burst_probe.py`).

    python bench/intake_cost.py --out bench/results/cpu2core_intake_s33.json   # the demo's Orpheus tokenizer
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

from _common import write_json
from fastapi import APIRouter, Depends, FastAPI, Request, Response

from oai_server.codec.orpheus import speech_prompt
from oai_server.codec.tokenizer import direct_encoder
from oai_server.pipeline.segmenter import segment_and_pack, split_text
from oai_server.protocol.chat import ChatCompletionRequest, SpeechRequest
from oai_server.routes.deps import services
from oai_server.routes.errors import install_error_handlers

TEXTS = {
    "41 chars": "Hello there! How are you doing today, Sam?",
    "287 chars": (
        "The quick brown fox jumps over the lazy dog, then rests beside the river for a while. Later that "
        "afternoon it wanders back through the tall grass, stopping now and then to listen for the farmer's "
        "dog. When the sun finally sets, it curls up under the old oak tree and falls asleep."
    ),
}


def best_us(run: Callable[[], Any], repeats: int, rounds: int = 5) -> float:
    """The fastest of `rounds` rounds of `repeats` calls, in µs a call."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e6


ROUTE_BODIES = {
    "speech": {"model": "tts-1", "input": TEXTS["41 chars"], "voice": "tara", "response_format": "pcm"},
    "chat": {"model": "m", "messages": [{"role": "user", "content": TEXTS["41 chars"]}], "stream": True},
}


def route_app(route_class: type[Any]) -> Any:
    """An app with the speech and chat endpoints' signatures under `route_class`, each answering at once (the models
    are imported at module level: FastAPI resolves the endpoints' annotations in the module's globals)."""
    router = APIRouter(route_class=route_class)

    @router.post("/speech")
    async def speech(body: SpeechRequest, svc: Any = Depends(services)) -> Response:
        return Response(b"")

    @router.post("/chat", response_model=None)
    async def chat(body: ChatCompletionRequest, request: Request, svc: Any = Depends(services)) -> Response:
        return Response(b"")

    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.services = object()
    return app


async def _post(app: Any, path: str, body: bytes) -> None:
    """One POST of `body` straight into the ASGI app (no socket), its response dropped."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])
    status: list[int] = []

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(scope, receive, send)
    assert status == [200], status


async def best_us_async(run: Callable[[], Awaitable[Any]], repeats: int, rounds: int = 5) -> float:
    """`best_us` of a coroutine function."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            await run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best * 1e6


async def measure_routes(repeats: int) -> dict[str, Any]:
    """Per endpoint: µs of a request through FastAPI's route handler (before) and `DirectBodyRoute` (now)."""
    from fastapi.routing import APIRoute

    from oai_server.routes.direct_body import DirectBodyRoute

    apps = {"before": route_app(APIRoute), "now": route_app(DirectBodyRoute)}
    rows: dict[str, Any] = {}
    for name, body in ROUTE_BODIES.items():
        raw = json.dumps(body).encode()
        row = {when: await best_us_async(partial(_post, app, f"/{name}", raw), repeats) for when, app in apps.items()}
        rows[name] = {"before_us": row["before"], "now_us": row["now"], "saved_us": row["before"] - row["now"]}
    return rows


def measure(tokenizer: Any, repeats: int) -> dict[str, Any]:
    """Per text: µs of `split_text` and of the prompt's tokenization, before and now."""
    direct = direct_encoder(tokenizer)
    rows: dict[str, Any] = {}
    for name, text in TEXTS.items():
        assert segment_and_pack(text) == split_text(text) and speech_prompt(direct, "tara", text) == speech_prompt(
            tokenizer, "tara", text
        )
        before = {
            "split_us": best_us(lambda: segment_and_pack(text), repeats),  # noqa: B023
            "prompt_us": best_us(lambda: speech_prompt(tokenizer, "tara", text), repeats),  # noqa: B023
        }
        now = {
            "split_us": best_us(lambda: split_text(text), repeats),  # noqa: B023
            "prompt_us": best_us(lambda: speech_prompt(direct, "tara", text), repeats),  # noqa: B023
        }
        saved = before["split_us"] + before["prompt_us"] - now["split_us"] - now["prompt_us"]
        rows[name] = {"before": before, "now": now, "saved_us": saved}
    return {"direct_encoder": type(direct).__name__, "texts": rows}


def main(argv: list[str] | None = None) -> int:
    """Measure with the given tokenizer (default: the demo's Orpheus one, built if missing) and write JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory or id (default: the demo's Orpheus)")
    p.add_argument("--repeats", type=int, default=2000)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    from oai_server.engines.loading import load_tokenizer

    if args.tokenizer is None:
        from oai_server.engines.demo import build_demo_models
        from oai_server.settings import Settings

        args.tokenizer = str(build_demo_models(Path(Settings().cache_dir)).tts_dir)
    report = {
        "tokenizer": args.tokenizer,
        "repeats": args.repeats,
        **measure(load_tokenizer(args.tokenizer), args.repeats),
        "routes": asyncio.run(measure_routes(args.repeats)),
    }
    for name, row in report["texts"].items():
        b, n = row["before"], row["now"]
        print(
            f"{name}: split {b['split_us']:.1f} -> {n['split_us']:.1f} us, prompt {b['prompt_us']:.1f} -> "
            f"{n['prompt_us']:.1f} us; saved {row['saved_us']:.1f} us a request"
        )
    for name, row in report["routes"].items():
        print(f"{name} route: {row['before_us']:.1f} -> {row['now_us']:.1f} us; saved {row['saved_us']:.1f} us")
    if args.out:
        write_json(args.out, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
