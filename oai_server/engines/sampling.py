"""Pure-torch logits processing and sampling, shared by engines that run their own decode loop.

Order per step (as in vLLM): penalties -> Orpheus audio-slot constraint -> temperature
(below 1e-5 means greedy) -> top-k -> top-p -> multinomial with a per-request `torch.Generator`.
Stop tokens are the caller's business: `TokenSampler.step` only picks the next id.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from oai_server.codec import orpheus
from oai_server.engines.base import SamplingParams


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private RNG for one request: seeded from ``seed``, or from fresh entropy when None."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """HF-style: for ids in ``seen`` (bool mask), divide positive logits by ``penalty``, multiply
    negative ones by it. ``penalty`` 1.0 is a no-op."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_frequency(
    logits: torch.Tensor, counts: torch.Tensor, presence: float, frequency: float
) -> torch.Tensor:
    """OpenAI-style: ``logit -= frequency * count + presence * (count > 0)`` over generated ids."""
    if presence == 0.0 and frequency == 0.0:
        return logits
    counts_f = counts.to(logits.dtype)
    return logits - frequency * counts_f - presence * (counts_f > 0).to(logits.dtype)


def may_stop(position: int, min_tokens: int = 0) -> bool:
    """Whether `END_OF_SPEECH` may come at audio position ``position``: a frame boundary from ``min_tokens`` on."""
    return orpheus.stop_allowed(position) and position >= min_tokens


def audio_slot_mask(logits: torch.Tensor, position: int, min_tokens: int = 0) -> torch.Tensor:
    """Keep only the ids allowed at Orpheus audio position ``position``; the rest become -inf.

    Allowed: the 4096-id band of slot ``position % 7`` and, on a frame boundary from ``min_tokens`` on,
    `END_OF_SPEECH`. Works on ``[..., vocab]`` tensors with one fill and one slice copy.
    """
    band = orpheus.slot_band(position)
    out = torch.full_like(logits, float("-inf"))
    out[..., band.start : band.stop] = logits[..., band.start : band.stop]
    if may_stop(position, min_tokens):
        eos = orpheus.END_OF_SPEECH
        out[..., eos] = logits[..., eos]
    return out


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` largest logits of a 1-D tensor (ties at the boundary kept); 0 disables."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filter on a 1-D tensor: keep the smallest set of most likely ids whose
    probability mass reaches ``top_p`` (the most likely id is always kept)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = mass_before >= top_p
    drop_sorted[0] = False
    drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


GREEDY_BELOW = 1e-5
"""Temperatures below this sample greedily, as in vLLM (smaller ones overflow `logits / temperature`)."""


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Pick one index from processed 1-D logits: greedy when temperature is (nearly) 0, else
    temperature -> top-k -> top-p -> multinomial with ``generator``."""
    if params.temperature < GREEDY_BELOW:
        return int(torch.argmax(logits))
    scaled = apply_top_p(apply_top_k(logits / params.temperature, params.top_k), params.top_p)
    probs = torch.softmax(scaled, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


class TokenSampler:
    """Per-request sampling state: penalty bookkeeping, audio position and RNG.

    Call `step` with the next-token logits (1-D, full vocabulary); it returns the chosen id
    and records it as generated. With ``params.orpheus_audio_slots`` the k-th call may only
    return an id of `orpheus.slot_band(k)` or, when `orpheus.stop_allowed(k)`, END_OF_SPEECH. Before
    ``params.min_tokens`` calls, no stop token is returned.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int],
        vocab_size: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.params = params
        self.vocab_size = vocab_size
        self.generated = 0
        self.generator = make_generator(params.seed, device)
        self._counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)
        self._seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        prompt = [t for t in prompt_token_ids if 0 <= t < vocab_size]
        if prompt:
            self._seen[torch.tensor(prompt, device=device)] = True

    def penalise(self, logits: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Apply the repetition, presence and frequency penalties to ``logits``, which hold the
        ids ``start .. start + len(logits) - 1``; returns float32 logits."""
        stop = start + logits.shape[-1]
        logits = apply_repetition_penalty(logits.float(), self._seen[start:stop], self.params.repetition_penalty)
        return apply_presence_frequency(
            logits, self._counts[start:stop], self.params.presence_penalty, self.params.frequency_penalty
        )

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Penalties and the audio-slot constraint (no temperature/top-k/top-p), full vocabulary."""
        logits = self.penalise(logits)
        if self.params.orpheus_audio_slots:
            return audio_slot_mask(logits, self.generated, self.params.min_tokens)
        if self.generated < self.params.min_tokens and self.params.stop_token_ids:
            stops = [t for t in self.params.stop_token_ids if 0 <= t < logits.shape[-1]]
            logits = logits.clone()  # penalise may hand back the caller's tensor
            logits[stops] = float("-inf")
        return logits

    def step(self, logits: torch.Tensor) -> int:
        """Choose the next token id from next-token ``logits`` and record it."""
        if self.params.orpheus_audio_slots:
            # Same result as choosing over `audio_slot_mask(self.process(logits))`, but only the
            # 4097 allowed logits are penalised and sorted, not all 156 940.
            band = orpheus.slot_band(self.generated)
            candidates = self.penalise(logits[band.start : band.stop], band.start)
            if may_stop(self.generated, self.params.min_tokens):
                eos = orpheus.END_OF_SPEECH
                candidates = torch.cat([candidates, self.penalise(logits[eos : eos + 1], eos)])
            index = choose(candidates, self.params, self.generator)
            token = band.start + index if index < len(band) else orpheus.END_OF_SPEECH
        else:
            token = choose(self.process(logits), self.params, self.generator)
        self.record(token)
        return token

    def record(self, token_id: int) -> None:
        """Account one generated token for penalties and the audio position."""
        self.generated += 1
        if 0 <= token_id < self.vocab_size:
            self._counts[token_id] += 1
            self._seen[token_id] = True
