"""Which cards each engine gets: the server's GPU layout, decided from the cards it sees.

`plan_layout(cards, card_gib, request)` is a pure function of the visible card count, the smallest
card's memory, the stated workload (`--placement`) and the settings given explicitly; the factory
calls it with what torch sees, and logs `Layout.describe()` in one block at start. Roles: Gemma
(`llm`), Orpheus (`tts`), Whisper (`asr`) and the SNAC decoder (in the server process, or in the
Orpheus engines' processes).

Layouts (`--placement`):

* `replicated` (what `auto` picks on 2+ cards): one server process per card, all on the one port, each
  with the `shared` layout on its own card (`server_processes` decides how many; `oai_server/replicas.py`
  runs them). One process on two H200s carried 192 speech streams, 80 chat conversations and a mixed 32
  (`speech` layout), where two processes, one per card, carried 320, 208 and 96 against one card's 160, 96
  and 48 (session 12, random weights): a burst waits on one event loop taking its requests in one after
  another, and two loops take it in twice as fast. The in-process layouts below remain for one process
  on several cards (`--replicas 1`) and for what one card cannot hold.
* `shared`: today's one-card layout: every engine on the first visible card, memory shares as set
  (0.35 / 0.25 / 0.10 by default). `auto` picks it on one card; on one card every workload is this.
* `balanced` (what `auto` picks for one process on 2+ cards, `--replicas 1`) and `chat`: Gemma, Whisper
  and SNAC on card 0, an Orpheus engine on every other card. Gemma's first clause is inside every chat reply's time to
  first audio, and two vLLM engines on one card take turns by whole steps (each ran at half speed),
  so Gemma gets a card without Orpheus. This is the layout measured on two H200s with manual flags
  (`--llm-gpus 0 --tts-gpus 1`): 192 speech streams at RTF 0.70 and 128 chat conversations without
  underruns, against 128 and 32 on one card. `chat` and `balanced` give the same cards today; they
  are separate names so that a measured difference can change one without the other.
* `speech`: an Orpheus engine on every card, card 0's beside Gemma and Whisper, each engine with its
  own SNAC (below). Speech-only load leaves Gemma idle, so card 0's spare time serves Orpheus too.

Orpheus engines are replicas behind the server's balancer (`engines/balanced.py`), which sends each
new stream to the replica with the fewest live streams per weight. A replica that shares a card
with another engine has weight 1/2 (it takes one stream for every two on a card of its own), and
SNAC goes to the card with the least Orpheus weight on it (then the fewest engines): never an
Orpheus card when there is a choice, else the one whose replica takes fewer streams.

With `--snac-in-engine` (the default) and SNAC's card holding an Orpheus engine, SNAC decodes in the
Orpheus engines' own processes instead of the server's (`codec/snac_service.py`): every replica alone
on its card hosts a SNAC and decodes the streams it generates (`engines/snac_replicas.py`), or, with an
explicit `--snac-device cuda:N`, only the replica on card N, for every stream. Each such card keeps
SNAC's memory reserve. In `speech`, with SNAC on every card, card 0's replica has weight 1: a speech
load leaves the Gemma and Whisper beside it idle, so the cards differ in nothing the load uses.

Explicit settings win. With `auto`, any placement flag (`--llm-gpus`, `--tts-gpus`, `--asr-gpus`,
the tensor/data-parallel sizes) means the manual layout: exactly those flags, an unnamed role on the
first visible card (the behaviour before layouts existed). With a named layout, a role whose cards
are named keeps them and the others follow the layout; an explicit `--tts-data-parallel-size`
turns the layout's Orpheus cards into one vLLM data-parallel engine instead of replicas.
`--snac-device` other than `auto` and an explicit memory share are kept as given.

Memory shares: each engine's `gpu_memory_utilization`, computed per card when engines leave card 0
(`layout_shares.py`, which also refuses a card whose shares do not fit it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .layout_shares import ROLE_NAMES, SNAC_RESERVE_GIB, EnginePlan, check_shares, plan_shares, spread
from .placement import Placement, make_placement, make_replicas

if TYPE_CHECKING:
    from ..settings import Settings

WORKLOADS = ("auto", "replicated", "shared", "speech", "chat", "balanced")
REPLICATED_WORKLOADS = ("auto", "replicated", "shared")
"""Workloads a replica of several can run: each replica's process holds one card, so it runs `shared`."""
ROLES = ("llm", "tts", "asr")
PLACEMENT_FIELDS = (
    "llm_gpus",
    "tts_gpus",
    "asr_gpus",
    "llm_tensor_parallel_size",
    "tts_tensor_parallel_size",
    "tts_data_parallel_size",
)
"""Settings that, given explicitly, make `auto` the manual layout."""

SHARING_REPLICA_WEIGHT = 0.5
"""Balancing weight of a replica that shares a card with another engine (1 on a card of its own)."""


@dataclass(frozen=True)
class LayoutRequest:
    """What the layout depends on besides the cards: the workload and the settings (raw flags)."""

    workload: str = "auto"
    gpus: Mapping[str, str | None] = field(default_factory=dict)
    """The `--llm-gpus`/`--tts-gpus`/`--asr-gpus` flags by role."""
    llm_tensor_parallel: int = 1
    tts_tensor_parallel: int = 1
    tts_data_parallel: int = 1
    memory: Mapping[str, float] = field(default_factory=lambda: {"tts": 0.35, "llm": 0.25, "asr": 0.1})
    """Each role's `--*-gpu-memory-utilization` value."""
    explicit: frozenset[str] = frozenset()
    """Names of the settings given explicitly (flag or environment)."""
    snac_device: str = "auto"
    snac_in_engine: bool = False
    """`--snac-in-engine`: SNAC may decode in the Orpheus engines' processes."""
    asr: bool = True
    replicas: int = 0
    """`--replicas`: server processes on the one port (0: `server_processes` decides)."""

    @classmethod
    def from_settings(cls, settings: Settings) -> LayoutRequest:
        """The request a server's settings make."""
        return cls(
            workload=settings.placement,
            gpus={"llm": settings.llm_gpus, "tts": settings.tts_gpus, "asr": settings.asr_gpus},
            llm_tensor_parallel=settings.llm_tensor_parallel_size,
            tts_tensor_parallel=settings.tts_tensor_parallel_size,
            tts_data_parallel=settings.tts_data_parallel_size,
            memory={
                "llm": settings.llm_gpu_memory_utilization,
                "tts": settings.tts_gpu_memory_utilization,
                "asr": settings.asr_gpu_memory_utilization,
            },
            explicit=frozenset(settings.model_fields_set),
            snac_device=settings.snac_device,
            snac_in_engine=settings.snac_in_engine,
            asr=settings.asr,
            replicas=settings.replicas,
        )

    @property
    def flagged(self) -> bool:
        """Whether a placement flag (a role's cards, a parallel size) was given explicitly."""
        return any(name in self.explicit for name in PLACEMENT_FIELDS)

    def named(self, role: str) -> bool:
        """Whether the role's cards were named by its `--<role>-gpus` flag."""
        return f"{role}_gpus" in self.explicit and bool(self.gpus.get(role))

    def memory_explicit(self, role: str) -> bool:
        """Whether the role's memory share was set explicitly."""
        return f"{role}_gpu_memory_utilization" in self.explicit


@dataclass(frozen=True)
class Layout:
    """Every engine of the server, where SNAC decodes, and why (`describe`)."""

    name: str
    """shared, speech, chat, balanced or manual."""
    requested: str
    cards: int
    card_gib: float
    engines: tuple[EnginePlan, ...]
    snac_device: str
    notes: tuple[str, ...] = ()
    snac_host_replicas: tuple[int, ...] = ()
    """The Orpheus replicas (indices into `role("tts")`) whose processes decode SNAC (`snac_hosts`)."""

    def role(self, role: str) -> tuple[EnginePlan, ...]:
        """The engines of one role (several: replicas behind the balancer)."""
        return tuple(plan for plan in self.engines if plan.role == role)

    @property
    def snac_card(self) -> int | None:
        """The card the server's SNAC decodes on (None: not on a GPU, or SNAC decodes in the engines)."""
        return None if self.snac_host_replicas else _cuda_index(self.snac_device)

    def snac_hosts(self) -> tuple[EnginePlan, ...]:
        """The Orpheus engines that decode SNAC in their own processes: every replica, each the streams it
        generates, or the one on an explicit `--snac-device`'s card, every stream (empty: the server decodes)."""
        replicas = self.role("tts")
        return tuple(replicas[index] for index in self.snac_host_replicas)

    def snac_cards(self) -> tuple[int, ...]:
        """Every card SNAC decodes on, in the server's process or in the engines'."""
        return _snac_cards([plan.cards for plan in self.role("tts")], self.snac_host_replicas, self.snac_device)

    @property
    def spread(self) -> bool:
        """Whether any engine sits off card 0 (then shares not set explicitly are computed)."""
        return spread(plan.placement for plan in self.engines)

    def describe(self) -> str:
        """The layout as a readable block for the start-up log."""
        lines = [
            f"GPU layout '{self.name}' (--placement {self.requested}; {self.cards} card(s) of {self.card_gib:.1f} GiB)"
        ]
        for card in range(self.cards):
            items = []
            for plan in self.engines:
                if card in plan.cards:
                    replicas = self.role(plan.role)
                    label = ROLE_NAMES[plan.role]
                    if len(replicas) > 1:
                        label += f" #{replicas.index(plan)}"
                    label += f" share {plan.memory:.2f}"
                    parallel = plan.placement.engine_kwargs()
                    label += "".join(f" {key.split('_')[0]}-parallel {value}" for key, value in parallel.items())
                    if len(replicas) > 1:
                        label += f" weight {plan.weight:g}"
                    items.append(label)
            if card in self.snac_cards():
                where = " in Orpheus's process" if self.snac_host_replicas else ""
                items.append(f"SNAC{where} (~{SNAC_RESERVE_GIB:g} GiB)")
            lines.append(f"  card {card}: {', '.join(items) or 'unused'}")
        if not self.snac_cards():
            lines.append(f"  SNAC: {self.snac_device}")
        elif len(self.snac_host_replicas) > 1:
            lines.append("  SNAC: one per Orpheus engine, in its process, decoding the streams that engine generates")
        for role in ROLES:
            replicas = self.role(role)
            if len(replicas) > 1:
                lines.append(
                    f"  {ROLE_NAMES[role]}: {len(replicas)} engines behind the server's balancer "
                    "(fewest live streams per weight; a stream stays on its engine)"
                )
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


def plan_layout(cards: int, card_gib: float, request: LayoutRequest) -> Layout:
    """The layout for `cards` visible GPUs of at least `card_gib` GiB each; `ValueError` with one clear
    message when the request cannot be laid out (see the module docstring for the rules)."""
    if request.workload not in WORKLOADS:
        raise ValueError(f"placement: {request.workload!r} is not one of {', '.join(WORKLOADS)}")
    if cards < 1:
        raise ValueError("placement: no GPU is visible; the vLLM engines need CUDA (or use --engine transformers)")
    roles = [role for role in ROLES if role != "asr" or request.asr]
    flagged = request.flagged
    notes: list[str] = []
    if request.workload == "auto":
        name = "manual" if flagged else ("shared" if cards == 1 else "balanced")
    elif request.workload == "replicated":  # this process is one replica, or the only one (`--replicas 1`)
        name = "shared"
        notes.append(
            "replicated: one card is visible, so one server process serves it (a process per card needs 2+)"
            if cards == 1
            else "replicated with --replicas 1: one server process (the one-card layout, its engines on the first card)"
        )
    elif cards == 1 and request.workload != "shared":
        name = "shared"
        notes.append(f"one card: the {request.workload} layout needs two or more, every engine shares it")
    else:
        name = request.workload

    if name in ("shared", "manual"):
        assigned = {role: list(_flagged(role, request)) for role in roles}
    else:
        assigned = _workload(name, cards, request, roles, notes)
        for role in roles:
            if request.named(role):
                assigned[role] = list(_flagged(role, request))
    for role, placements in assigned.items():
        for placement in placements:
            missing = [card for card in placement.cards() if card >= cards]
            if missing:
                raise ValueError(f"placement: {role} on GPU(s) {missing}, which do not exist ({cards} visible)")

    weights = _weights(assigned)
    snac_device = _snac_device(request.snac_device, cards, assigned, weights)
    hosts = _snac_host_replicas(request, assigned["tts"], _cuda_index(snac_device))
    if name == "speech" and hosts and len(hosts) == len(assigned["tts"]):
        # every card decodes its own streams' SNAC, and a speech load leaves card 0's Gemma and Whisper idle
        weights.update({("tts", index): 1.0 for index in range(len(hosts))})
    explicit = {role for role in roles if request.memory_explicit(role)}
    snac_cards = _snac_cards([p.cards() for p in assigned["tts"]], hosts, snac_device)
    plans = plan_shares(assigned, weights, card_gib, request.memory, explicit, snac_cards)
    layout = Layout(name, request.workload, cards, card_gib, plans, snac_device, tuple(notes), hosts)
    check_shares(name, cards, card_gib, plans, snac_cards, explicit)
    return layout


def server_processes(cards: int, request: LayoutRequest) -> int:
    """How many server processes share the port: `--replicas` as given, else one per card for `replicated`
    (and `auto` without placement flags) on 2+ cards, else one. `cards` is 0 where the engines take no card
    (demo, transformers, remote). `ValueError` with one clear message for what cannot be laid out."""
    count = request.replicas
    if request.flagged and (count > 1 or (count == 0 and request.workload == "replicated")):
        asked = f"--replicas {count}" if count else "placement replicated"
        raise ValueError(
            f"{asked} puts every engine on each card; the placement flags (--llm-gpus, --tts-gpus, --asr-gpus, "
            "the parallel sizes) lay out one process: give one or the other"
        )
    if count > 1:
        if request.workload not in REPLICATED_WORKLOADS:
            raise ValueError(
                f"--replicas {count} runs the shared layout in every replica; --placement {request.workload} lays out "
                "one process over several cards: use --placement replicated (or auto), or --replicas 1"
            )
        if 0 < cards < count:
            raise ValueError(f"--replicas {count}: each replica needs a card of its own, and {cards} are visible")
    if count:
        return count
    replicated = request.workload == "replicated" or (request.workload == "auto" and not request.flagged)
    return cards if replicated and cards > 1 else 1


def _flagged(role: str, request: LayoutRequest) -> tuple[Placement, ...]:
    if role == "llm":
        return make_replicas("llm", request.gpus.get("llm"), request.llm_tensor_parallel, 1)
    if role == "tts":
        return make_replicas("tts", request.gpus.get("tts"), request.tts_tensor_parallel, request.tts_data_parallel)
    return (make_placement("asr", request.gpus.get("asr"), 1, 1),)


def _workload(
    name: str, cards: int, request: LayoutRequest, roles: list[str], notes: list[str]
) -> dict[str, list[Placement]]:
    """speech / chat / balanced on 2+ cards: the host roles on card 0, Orpheus where the workload puts it."""
    if request.llm_tensor_parallel > 1 and not request.named("llm"):
        raise ValueError(
            f"placement {name}: --llm-tensor-parallel-size {request.llm_tensor_parallel} needs --llm-gpus naming "
            "its cards (the layouts give Gemma card 0)"
        )
    tp, dp = request.tts_tensor_parallel, request.tts_data_parallel
    free = list(range(cards)) if name == "speech" else list(range(1, cards))
    groups = [tuple(free[i : i + tp]) for i in range(0, len(free) - tp + 1, tp)]
    if not groups and not request.named("tts"):
        raise ValueError(
            f"placement {name} on {cards} cards: Orpheus needs {tp} card(s) per engine (--tts-tensor-parallel-size) "
            f"and the layout leaves it {len(free)}; use fewer tensor-parallel cards or name them with --tts-gpus"
        )
    used = len(groups) * tp
    if dp > 1 and not request.named("tts"):
        if len(groups) < dp:
            raise ValueError(
                f"placement {name} on {cards} cards: --tts-data-parallel-size {dp} x --tts-tensor-parallel-size {tp} "
                f"needs {dp * tp} Orpheus cards and the layout has {used}"
            )
        flat = tuple(card for group in groups[:dp] for card in group)
        tts = [Placement(flat, tp, dp)]
        used = dp * tp
        notes.append(f"Orpheus: one vLLM engine, data parallel {dp} (vLLM balances; per-card weights do not apply)")
    else:
        tts = [Placement(group, tp, 1) for group in groups]
    if used < len(free) and not request.named("tts"):
        notes.append(f"card(s) {free[used:]} left without Orpheus (tensor/data-parallel sizes)")
    assigned: dict[str, list[Placement]] = {"llm": [Placement((0,))], "tts": tts}
    if "asr" in roles:
        assigned["asr"] = [Placement((0,))]
    return assigned


def _weights(assigned: Mapping[str, list[Placement]]) -> dict[tuple[str, int], float]:
    """Per replica: 1/2 when it shares a card with another engine and a sibling has its cards alone."""
    occupancy: dict[int, int] = {}
    for placements in assigned.values():
        for placement in placements:
            for card in placement.cards():
                occupancy[card] = occupancy.get(card, 0) + 1
    weights: dict[tuple[str, int], float] = {}
    for role, placements in assigned.items():
        sharing = [any(occupancy[card] > 1 for card in p.cards()) for p in placements]
        mixed = len(placements) > 1 and any(sharing) and not all(sharing)
        for index, shares in enumerate(sharing):
            weights[(role, index)] = SHARING_REPLICA_WEIGHT if mixed and shares else 1.0
    return weights


def _snac_device(
    requested: str, cards: int, assigned: Mapping[str, list[Placement]], weights: Mapping[tuple[str, int], float]
) -> str:
    """`--snac-device` as given, or the card with the least Orpheus weight, then fewest engines, then lowest."""
    if requested != "auto":
        return requested
    orpheus = [0.0] * cards
    engines = [0] * cards
    for role, placements in assigned.items():
        for index, placement in enumerate(placements):
            for card in placement.cards():
                if card < cards:
                    engines[card] += 1
                    if role == "tts":
                        orpheus[card] += weights[(role, index)]
    best = min(range(cards), key=lambda card: (orpheus[card], engines[card], card))
    return f"cuda:{best}"


def _snac_host_replicas(request: LayoutRequest, tts: Sequence[Placement], snac_card: int | None) -> tuple[int, ...]:
    """With `--snac-in-engine`, where SNAC's card has an Orpheus engine and every Orpheus engine is alone
    on one card (no tensor or data parallelism, no two on a card): every replica hosts a SNAC of its
    own, or only the one on the card an explicit `--snac-device` names. Where SNAC's card has no
    Orpheus (balanced, chat), that card has headroom and the server decodes there."""
    if not request.snac_in_engine or snac_card is None or not tts:
        return ()
    cards = [p.cards() for p in tts]
    alone = all(len(c) == 1 and not p.engine_kwargs() for c, p in zip(cards, tts, strict=True))
    if not alone or len(set(cards)) != len(cards) or (snac_card,) not in cards:
        return ()
    return (cards.index((snac_card,)),) if request.snac_device != "auto" else tuple(range(len(tts)))


def _snac_cards(tts_cards: Sequence[tuple[int, ...]], hosts: Sequence[int], snac_device: str) -> tuple[int, ...]:
    """The cards of the host replicas (indices into the Orpheus engines' `tts_cards`), else the server's SNAC card."""
    if hosts:
        return tuple(tts_cards[index][0] for index in hosts)
    card = _cuda_index(snac_device)
    return () if card is None else (card,)


def _cuda_index(device: str) -> int | None:
    if device == "cuda":
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    return None
