"""The arrival model: Poisson arrivals with a realistic length mix, and overload past capacity.

Requests arrive as a Poisson process at `rate` per second for `duration_s` (exponential gaps from
a seeded `random.Random`). Each asks for a speech length drawn from `LengthMix`: lognormal with a
median of 5 s and sigma 0.6, clipped to 1-20 s (so ~6 s on average; 5 % under 2 s, 5 % over 13 s),
from the same seed, so every rate of a sweep sees the same sequence of lengths. Speech asks for
the length through the input text's token budget (`clients.speech_text`), chat through
`max_tokens` (`clients.chat_max_tokens`). The offered load in streams is `rate * mean length`
(Little's law: the mean concurrency if every stream ran at real time).

Per rate the report is `_common.summarize`'s (TTFA, RTF, underruns; 429s apart from failures,
with the time to the 429 and its `retry-after`; hung requests) plus the concurrency actually
reached (admitted streams between their response headers and their end, from the client's side)
and the capacity criteria as verdicts (`capacity.evaluate`).

`overload` offers `factor` (1.5) times a given capacity, as Poisson arrivals at
`factor * capacity / mean length` per second or as one burst of `factor * capacity`, and reports
whether every admitted stream had zero underruns, the fraction refused with 429, the time to
each 429 against the target (2 s), and that nothing hung.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from _common import SENTENCES, StreamResult, metrics_urls, percentile, summarize
from capacity import Criteria, evaluate
from client_pool import START_MARGIN_S, pool_for
from clients import RequestSpec, Seeds, chat_max_tokens, open_clients, request_fn, speech_text
from server_metrics import around


@dataclass(frozen=True)
class LengthMix:
    """Seconds of speech per request: lognormal(median, sigma) clipped to [min_s, max_s]."""

    median_s: float = 5.0
    sigma: float = 0.6
    min_s: float = 1.0
    max_s: float = 20.0

    def draw(self, rng: random.Random) -> float:
        """One length."""
        return min(self.max_s, max(self.min_s, rng.lognormvariate(math.log(self.median_s), self.sigma)))

    def mean_s(self) -> float:
        """The mean length (of 20000 draws with a fixed seed: exact enough, and the same every time)."""
        rng = random.Random(0)
        return sum(self.draw(rng) for _ in range(20000)) / 20000


def poisson_plan(rate: float, duration_s: float, mix: LengthMix, seed: int) -> list[tuple[float, float]]:
    """(arrival time, speech seconds) of every request arriving in [0, duration_s) at `rate` per second."""
    gaps, lengths = random.Random(f"gaps:{seed}"), random.Random(f"lengths:{seed}")
    plan: list[tuple[float, float]] = []
    t = 0.0
    while True:
        t += gaps.expovariate(rate)
        if t >= duration_s:
            return plan
        plan.append((t, mix.draw(lengths)))


def burst_plan(count: int, mix: LengthMix, seed: int) -> list[tuple[float, float]]:
    """`count` requests all at t=0 with lengths from the mix."""
    lengths = random.Random(f"lengths:{seed}")
    return [(0.0, mix.draw(lengths)) for _ in range(count)]


def spec_for(mode: str, index: int, seconds: float, args: argparse.Namespace, seed: int | None) -> RequestSpec:
    """The request asking for `seconds` of speech."""
    if mode == "speech":
        text = speech_text(seconds, args.tokens_per_char, index)
        return RequestSpec(text, seed=seed, target_audio_s=seconds, server=index)
    text = args.text or SENTENCES[index % len(SENTENCES)]
    return RequestSpec(text, chat_max_tokens(seconds, args.chat_tokens_per_s), seed, seconds, server=index)


async def run_plan(
    mode: str, plan: list[tuple[float, float]], args: argparse.Namespace, seeds: Seeds
) -> tuple[list[StreamResult], float]:
    """Send every planned request at its time; wait for all; the results and the wall time."""
    specs = [spec_for(mode, i, seconds, args, seeds.take()) for i, (_, seconds) in enumerate(plan)]
    pool = pool_for(args)
    if pool is not None:  # dealt out to the client processes, each request its own worker sent at its time
        started = time.perf_counter() + START_MARGIN_S
        timed = [dataclasses.replace(spec, at_s=at) for (at, _), spec in zip(plan, specs, strict=True)]
        per_worker = await pool.run(args, [(mode, [spec]) for spec in timed])
        return [r for rs in per_worker for r in rs], time.perf_counter() - started
    request = request_fn(mode)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    timeout = httpx.Timeout(args.request_timeout, connect=30)
    async with open_clients(args.url, limits, timeout) as clients:
        started = time.perf_counter()
        tasks = []
        for (at, _), spec in zip(plan, specs, strict=True):
            await asyncio.sleep(max(0.0, started + at - time.perf_counter()))
            sent = time.perf_counter() - started
            client = clients[spec.server % len(clients)]
            tasks.append(asyncio.create_task(request(client, args, spec, args.hang_s, sent)))
        results = list(await asyncio.gather(*tasks))
        wall = time.perf_counter() - started
    return results, wall


def concurrency_reached(results: list[StreamResult], until_s: float | None = None) -> dict[str, float]:
    """Admitted streams in flight (response headers to end), as the client saw them: max and time-weighted mean."""
    events: list[tuple[float, int]] = []
    for r in results:
        if r.status == 200 and r.sent_at_s is not None and r.headers_s is not None:
            events += [(r.sent_at_s + r.headers_s, 1), (r.sent_at_s + r.wall_s, -1)]
    if not events:
        return {"max": 0, "mean": 0.0}
    events.sort()
    end = until_s if until_s is not None else events[-1][0]
    level, peak, area, last = 0, 0, 0.0, 0.0
    for t, step in events:
        clipped = min(t, end)
        area += level * max(0.0, clipped - last)
        last = max(last, clipped)
        level += step
        peak = max(peak, level)
    return {"max": peak, "mean": area / end if end > 0 else 0.0}


def _describe(
    results: list[StreamResult], wall: float, plan: list[tuple[float, float]], criteria: Criteria, window_s: float
) -> dict[str, Any]:
    summary = summarize(len(results), results, wall)
    summary["concurrency_reached"] = concurrency_reached(results, window_s or None)
    summary["mean_requested_audio_s"] = sum(s for _, s in plan) / len(plan) if plan else 0.0
    summary["criteria"] = evaluate(summary, criteria)
    return summary


async def run_rate(
    mode: str, rate: float, args: argparse.Namespace, seeds: Seeds, criteria: Criteria
) -> tuple[dict[str, Any], list[StreamResult]]:
    """Poisson arrivals at `rate` per second for `args.arrival_duration_s`: the report of that rate."""
    mix = length_mix(args)
    plan = poisson_plan(rate, args.arrival_duration_s, mix, args.arrival_seed)
    (results, wall), server = await around(metrics_urls(args), run_plan(mode, plan, args, seeds))
    summary = {
        "server": server,
        "rate_per_s": rate,
        "duration_s": args.arrival_duration_s,
        "offered_requests": len(plan),
        "offered_load_streams": rate * mix.mean_s(),
        **_describe(results, wall, plan, criteria, args.arrival_duration_s),
    }
    return summary, results


async def overload(
    mode: str, capacity: int, args: argparse.Namespace, seeds: Seeds, criteria: Criteria
) -> tuple[dict[str, Any], list[StreamResult]]:
    """Offer `args.overload_factor` x `capacity`; did the admitted streams stay clean and the rest get a quick 429?"""
    mix = length_mix(args)
    offered = args.overload_factor * capacity
    if args.overload_arrivals == "burst":
        plan = burst_plan(max(1, round(offered)), mix, args.arrival_seed)
        rate, window = None, 0.0
    else:
        rate = offered / mix.mean_s()
        plan = poisson_plan(rate, args.overload_duration_s, mix, args.arrival_seed)
        window = args.overload_duration_s
    (results, wall), server = await around(metrics_urls(args), run_plan(mode, plan, args, seeds))
    summary = _describe(results, wall, plan, criteria, window) | {"server": server}
    admitted = [r for r in results if r.status == 200]
    refused = [r for r in results if r.refused]
    times = [r.headers_s for r in refused if r.headers_s is not None]
    target = args.refusal_target_s
    verdict = {
        "admitted_zero_underruns": all(r.ok and r.underruns == 0 for r in admitted),
        "refusals_within_target": all(t <= target for t in times),
        "nothing_hung": summary["hung"] == 0,
        "no_other_failures": summary["errors"] == 0,
    }
    return {
        "capacity": capacity,
        "factor": args.overload_factor,
        "arrivals": args.overload_arrivals,
        "rate_per_s": rate,
        "duration_s": window,
        "offered_requests": len(plan),
        "offered_load_streams": offered,
        "admitted": len(admitted),
        "admitted_with_underruns": sum(1 for r in admitted if r.underruns > 0),
        "admitted_underruns": [r.underruns for r in admitted],
        "refused_fraction": len(refused) / len(results) if results else 0.0,
        "time_to_429_s_max": max(times, default=None),
        "time_to_429_s_p95": percentile(times, 95),
        "refusal_target_s": target,
        "verdict": verdict,
        "passed": all(verdict.values()),
        **summary,
    }, results


def length_mix(args: argparse.Namespace) -> LengthMix:
    """The length mix from the CLI flags."""
    return LengthMix(args.length_median_s, args.length_sigma, args.length_min_s, args.length_max_s)


def mix_config(args: argparse.Namespace) -> dict[str, Any]:
    """The arrival model's settings, for the JSON."""
    mix = length_mix(args)
    return {**asdict(mix), "mean_s": mix.mean_s(), "seed": args.arrival_seed, "tokens_per_char": args.tokens_per_char,
            "chat_tokens_per_s": args.chat_tokens_per_s}  # fmt: skip
