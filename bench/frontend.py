"""The server's front end alone: the real app, routes, admission and pipeline over paced engines, no GPU.

What a burst costs the HTTP server process itself (parsing, validation, admission, segmenting, framing,
the event loop) shows up as the gap between the client's time to first audio and the server's own. On
the GPU that gap reached ~1 s at 288 speech streams on two H200s (client TTFA p95 1365 ms, server 286 ms),
so this serves the same app with engines that cost nothing: Orpheus is a paced fake that yields one
7-token frame every `7 / --token-rate` seconds per stream (random but valid audio codes), SNAC returns
silence of the right length, Gemma yields a fixed sentence. Point `bench/load.py` at it:

    python bench/frontend.py --port 8090 &            # as `oai-server serve` runs it (httptools, uvloop)
    python bench/frontend.py --port 8090 --http h11 --loop asyncio &   # without uvicorn[standard]'s extras
    python bench/load.py --url http://127.0.0.1:8090 --mode speech --concurrency 64,128,288 --client-procs 4

The server's `/metrics` carries the same histograms as on the GPU (`bench/server_metrics.py`), among them
the whole server-side time to the first audio byte (`oai_http_first_byte_seconds`).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import uvicorn
from baselines import SilentDecoder  # the in-process `silent` mode's: silence of the right length, no SNAC

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oai_server.app import create_app
from oai_server.codec.orpheus import END_OF_SPEECH, slot_band
from oai_server.engines.arrival_window import ArrivalWindow
from oai_server.engines.base import EngineInfo, SamplingParams
from oai_server.engines.bundle import Engines
from oai_server.engines.factory import gemma_stop_ids, resolve_models
from oai_server.engines.loading import load_tokenizer
from oai_server.runtime_limits import uvicorn_options
from oai_server.settings import Settings


class PacedEngine:
    """A `TokenEngine` that yields `per_delta` tokens every `per_delta / token_rate` seconds per request.

    With `output_us_per_token`, it also costs the event loop what vLLM's in-process client does: every
    `1 / token_rate` seconds (one engine step) a task busies the loop for that many µs per live request,
    as `AsyncLLM`'s output handler processes every request's new token each step; with `add_request_us`,
    each new request busies it that long, as its input processing.

    A GPU's limits, roughly: with `aggregate_token_rate` the live requests share that many tokens a second (each
    at most `token_rate`), and with `arrival_pause_ms` every new request holds every stream that long, as a step
    that carries its prefill does; `hiccup_every_s` / `hiccup_ms` pause them all periodically instead. With
    `arrival_window_ms` arrivals enter in groups (`ArrivalWindow`, the server's `--tts-arrival-window-ms`), and a
    group's prefills share one step: one pause for the group."""

    def __init__(
        self,
        kind: str,
        tokens: Sequence[int] | None,
        token_rate: float,
        per_delta: int,
        output_us_per_token: float = 0,
        add_request_us: float = 0,
        hiccup_every_s: float = 0,
        hiccup_ms: float = 0,
        aggregate_token_rate: float = 0,
        arrival_pause_ms: float = 0,
        arrival_window_ms: float = 0,
    ) -> None:
        self.info = EngineInfo(kind=kind, model="paced", max_model_len=8192, details={})
        self.tokens = tokens
        self.token_rate = token_rate
        self.aggregate_token_rate = aggregate_token_rate
        self.per_delta = per_delta
        self.step_s = 1 / token_rate
        self.output_s_per_token = output_us_per_token / 1e6
        self._active = 0
        self._handler: asyncio.Task[None] | None = None
        self.add_request_s = add_request_us / 1e6
        self.hiccup_every_s = hiccup_every_s
        self.hiccup_s = hiccup_ms / 1000
        self.arrival_pause_s = arrival_pause_ms / 1000
        self.held_s = 0.0
        """Seconds every live stream has been held by new requests' prefills so far (`arrival_pause_ms` each)."""
        self.arrivals = ArrivalWindow(arrival_window_ms / 1000)
        self._paused_group = 0
        self._origin = time.monotonic()

    def _interval(self) -> float:
        """Seconds between one request's deltas now: its share of the aggregate rate, if any, at most `token_rate`."""
        rate = self.token_rate
        if self.aggregate_token_rate:
            rate = min(rate, self.aggregate_token_rate / max(1, self._active))
        return self.per_delta / rate

    async def _through_pauses(self, held_s: float) -> None:
        """Wait out the engine-wide pauses: the periodic hiccup under way, if any (every `hiccup_every_s` every
        stream stops for `hiccup_s`), and the prefills of the requests that arrived since `held_s` was read (and of
        those that arrive meanwhile), `arrival_pause_s` each."""
        if self.hiccup_every_s:
            into = (time.monotonic() - self._origin) % self.hiccup_every_s
            if into < self.hiccup_s:
                await asyncio.sleep(self.hiccup_s - into)
        while self.held_s > held_s:
            wait, held_s = self.held_s - held_s, self.held_s
            await asyncio.sleep(wait)

    async def _output_handler(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            until = time.perf_counter() + self._active * self.output_s_per_token
            while time.perf_counter() < until:  # the loop is busy, as with vLLM's OutputProcessor
                pass

    async def generate(
        self, prompt_token_ids: Sequence[int], params: SamplingParams, request_id: str
    ) -> AsyncIterator[list[int]]:
        """Audio frames (Orpheus) or the fixed text (Gemma), paced, up to `max_tokens`."""
        if self.output_s_per_token and self._handler is None:
            self._handler = asyncio.create_task(self._output_handler())
        until = time.perf_counter() + self.add_request_s
        while time.perf_counter() < until:  # the loop is busy, as with vLLM's input processing of a request
            pass
        group = await self.arrivals.enter(self._active)
        self._active += 1
        if group == 0 or group != self._paused_group:  # a group's prefills share one step: one pause for them all
            self.held_s += self.arrival_pause_s
            self._paused_group = group
        rng = random.Random(request_id)
        try:
            sent = 0
            while sent < params.max_tokens:
                held_s = self.held_s
                await asyncio.sleep(self._interval())
                await self._through_pauses(held_s)
                count = min(self.per_delta, params.max_tokens - sent)
                if self.tokens is None:
                    delta = [slot_band(sent + k).start + rng.randrange(4096) for k in range(count)]
                else:
                    delta = [self.tokens[(sent + k) % len(self.tokens)] for k in range(count)]
                sent += count
                yield delta
            if self.tokens is None:
                yield [END_OF_SPEECH]
        finally:
            self._active -= 1

    async def abort(self, request_id: str) -> None:
        """Nothing to abort: closing the generator ends it."""

    async def check_health(self) -> None:
        """Always healthy."""

    def active_requests(self) -> int:
        """Requests being generated."""
        return self._active

    async def close(self) -> None:
        """Nothing to release."""


def build(args: argparse.Namespace) -> tuple[Settings, Engines]:
    """Demo-profile settings (tokenizers of the tiny models) and the paced engines."""
    settings = resolve_models(
        Settings(
            demo=True,
            asr=False,
            warmup_batch_sizes=[],
            max_concurrent_streams=args.max_streams,
            tts_max_tokens=args.tts_max_tokens,
            snac_hurry_lead_ms=args.snac_hurry_lead_ms,
            headroom_margin=args.headroom_margin,
            headroom_overload_margin=args.headroom_overload_margin,
            snac_ramp=args.snac_ramp,
        )
    )
    llm_tokenizer = load_tokenizer(settings.llm_model_name)
    tts_tokenizer = load_tokenizer(settings.tts_model_name)
    sentence = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)
    words = llm_tokenizer.encode(sentence, add_special_tokens=False)
    engines = Engines(
        PacedEngine("paced-gemma", words, args.llm_token_rate, 1),
        llm_tokenizer,
        gemma_stop_ids(llm_tokenizer),
        PacedEngine(
            "paced-orpheus",
            None,
            args.token_rate,
            7,
            args.output_us_per_token,
            args.add_request_us,
            args.hiccup_every_s,
            args.hiccup_ms,
            args.aggregate_token_rate,
            args.arrival_pause_ms,
            args.arrival_window_ms,
        ),
        tts_tokenizer,
        SilentDecoder(None, "cpu", 64),
    )
    return settings, engines


def main() -> None:
    """Serve the app over paced engines until interrupted."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8090)
    p.add_argument("--token-rate", type=float, default=110.0, help="Orpheus tokens/s per stream (82 is real time)")
    p.add_argument("--llm-token-rate", type=float, default=120.0, help="Gemma tokens/s per conversation")
    p.add_argument("--tts-max-tokens", type=int, default=1024)
    p.add_argument(
        "--add-request-us", type=float, default=0.0,
        help="loop time each new Orpheus request costs, as vLLM's in-process input processing (0: none)",
    )  # fmt: skip
    p.add_argument(
        "--output-us-per-token", type=float, default=0.0,
        help="loop time per live Orpheus request per engine step, as vLLM's in-process output processing (0: none)",
    )  # fmt: skip
    p.add_argument(
        "--hiccup-every-s", type=float, default=0.0,
        help="every this many seconds all Orpheus streams pause for --hiccup-ms, as for a step full of prefills",
    )  # fmt: skip
    p.add_argument("--hiccup-ms", type=float, default=0.0)
    p.add_argument(
        "--aggregate-token-rate", type=float, default=0.0,
        help="Orpheus tokens/s all live streams share, as a GPU's (each still at most --token-rate; 0: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--arrival-pause-ms", type=float, default=0.0,
        help="every new Orpheus request holds every stream this long, as the step with its prefill does",
    )  # fmt: skip
    p.add_argument(
        "--arrival-window-ms", type=float, default=0.0,
        help="the server's --tts-arrival-window-ms: arrivals into the busy engine enter in groups, one pause a group",
    )  # fmt: skip
    p.add_argument("--headroom-margin", type=float, default=1.1, help="the server's --headroom-margin")
    p.add_argument(
        "--headroom-overload-margin", type=float, default=Settings().headroom_overload_margin,
        help="the server's --headroom-overload-margin (--headroom-margin's value: never tightened after a 429)",
    )  # fmt: skip
    p.add_argument("--snac-hurry-lead-ms", type=int, default=0, help="the server's --snac-hurry-lead-ms")
    p.add_argument("--snac-ramp", default=Settings().snac_ramp, help="the server's --snac-ramp")
    p.add_argument("--max-streams", type=int, default=1024)
    p.add_argument(
        "--http", choices=("server", "h11"), default="server",
        help="server: the protocol `oai-server serve` uses (httptools, guarded); h11: uvicorn's pure-Python one",
    )  # fmt: skip
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="uvicorn's event loop")
    args = p.parse_args()
    settings, engines = build(args)
    app = create_app(settings, engines)
    options = uvicorn_options(settings, app)
    if args.http == "h11":
        options["http"] = "h11"
    config = uvicorn.Config(
        app, host=args.host, port=args.port, loop=args.loop, log_level="warning", access_log=False, **options
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
