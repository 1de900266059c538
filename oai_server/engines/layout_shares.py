"""Each engine's memory share of its cards, and the check that every card's shares fit it.

vLLM's `gpu_memory_utilization` is a fraction of the whole card per engine, checked against free memory
when each engine starts. When every engine sits on card 0 the shares are the settings' values; otherwise
each share not set explicitly is computed per card: the engines on a card split `USABLE_SHARE` minus
SNAC's reserve (on every card SNAC decodes on) and any explicit shares there, Orpheus 3 : Gemma 2 :
Whisper 1; an engine spanning cards takes its smallest split. `check_shares` refuses a card whose shares
pass `MAX_SHARE_SUM`, or a computed share below its role's minimum, with one error naming the card and
the flags to change. `layout.py` decides the cards; this module only does the arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from .placement import Placement

ROLE_NAMES = {"llm": "Gemma", "tts": "Orpheus", "asr": "Whisper"}
USABLE_SHARE = 0.90
"""Fraction of a card the computed shares of its engines add up to (vLLM's default for one engine)."""
MAX_SHARE_SUM = 0.95
"""Most a card's shares plus SNAC's reserve may add up to (each engine's start checks free memory)."""
SNAC_RESERVE_GIB = 3.0
"""A card SNAC decodes on: in the server process its CUDA context, SNAC and its CUDA graphs (2.4 GB
measured); in an Orpheus engine's process SNAC and its graphs, beyond what vLLM's share counts."""
SPLIT_WEIGHT = {"tts": 3.0, "llm": 2.0, "asr": 1.0}
"""How engines sharing a card split it."""
MIN_GIB = {"tts": 8.0, "llm": 6.0, "asr": 2.0}
"""Smallest computed share per role: the default models' bf16 weights (6.6, 5.2, 1.6 GB) plus room."""


@dataclass(frozen=True)
class EnginePlan:
    """One engine to start: its role, cards, memory share and balancing weight among its role's replicas."""

    role: str
    placement: Placement
    memory: float
    weight: float = 1.0

    @property
    def cards(self) -> tuple[int, ...]:
        """The cards it occupies."""
        return self.placement.cards()


def spread(placements: Iterable[Placement]) -> bool:
    """Whether any engine sits off card 0 (then shares not set explicitly are computed)."""
    return any(card != 0 for placement in placements for card in placement.cards())


def snac_reserve(card: int, snac_cards: Collection[int], card_gib: float) -> float:
    """The share of `card` kept for SNAC (`SNAC_RESERVE_GIB`) where SNAC decodes on it, else 0."""
    return SNAC_RESERVE_GIB / card_gib if card in snac_cards and card_gib > 0 else 0.0


def plan_shares(
    assigned: Mapping[str, list[Placement]],
    weights: Mapping[tuple[str, int], float],
    card_gib: float,
    memory: Mapping[str, float],
    explicit: Collection[str],
    snac_cards: Collection[int],
) -> tuple[EnginePlan, ...]:
    """Every engine of `assigned` with its share: `memory[role]` where it is in `explicit` (roles whose share
    was given) or every engine is on card 0, else its computed split; `weights` are the balancing weights."""
    engines = [(role, index, p) for role, placements in assigned.items() for index, p in enumerate(placements)]
    computed = spread(p for _, _, p in engines)
    plans = []
    for role, index, placement in engines:
        if not computed or role in explicit:
            share = memory[role]
        else:
            splits = []
            for card in placement.cards():
                here = [r for r, _, p in engines if card in p.cards()]
                fixed = sum(memory[r] for r in here if r in explicit)
                flexible = sum(SPLIT_WEIGHT[r] for r in here if r not in explicit)
                splits.append(
                    (USABLE_SHARE - snac_reserve(card, snac_cards, card_gib) - fixed) * SPLIT_WEIGHT[role] / flexible
                )
            share = math.floor(min(splits) * 100) / 100
        plans.append(EnginePlan(role, placement, share, weights[(role, index)]))
    return tuple(plans)


def check_shares(
    name: str,
    cards: int,
    card_gib: float,
    plans: Sequence[EnginePlan],
    snac_cards: Collection[int],
    explicit: Collection[str],
) -> None:
    """Every card's shares plus SNAC's reserve fit it; every computed share holds its role's weights.
    `ValueError` naming the layout `name`, the card and the flags to change."""
    computed_layout = spread(plan.placement for plan in plans)
    for card in range(cards):
        here = [plan for plan in plans if card in plan.cards]
        computed = [plan for plan in here if computed_layout and plan.role not in explicit]
        for plan in computed:
            if plan.memory <= 0:
                raise ValueError(
                    f"placement {name}: the explicit memory shares on card {card} leave nothing for "
                    f"{ROLE_NAMES[plan.role]}; lower them or set --{plan.role}-gpu-memory-utilization too"
                )
        reserve = snac_reserve(card, snac_cards, card_gib)
        total = sum(plan.memory for plan in here) + reserve
        if total > MAX_SHARE_SUM + 1e-9:
            parts = " + ".join(f"{plan.role} {plan.memory:.2f}" for plan in here)
            snac_part = f" + SNAC {reserve:.2f}" if reserve else ""
            raise ValueError(
                f"placement {name}: card {card} would be over-committed: {parts}{snac_part} = {total:.2f} "
                f"> {MAX_SHARE_SUM} of {card_gib:.1f} GiB; lower --<role>-gpu-memory-utilization or spread "
                "the engines over more cards"
            )
        for plan in computed:
            gib = plan.memory * card_gib
            if gib < MIN_GIB[plan.role]:
                raise ValueError(
                    f"placement {name}: on card {card} {ROLE_NAMES[plan.role]} would get {gib:.1f} GiB "
                    f"(share {plan.memory:.2f}), below the {MIN_GIB[plan.role]:g} GiB its weights need; set "
                    f"--{plan.role}-gpu-memory-utilization explicitly or use --placement shared"
                )
