"""The GPU layout decision (`engines/layout.py`) on fake device counts: 1, 2, 3, 4 and 8 cards, every
workload, explicit overrides, and the combinations that cannot be laid out."""

from __future__ import annotations

from typing import Any

import pytest

from oai_server.engines.layout import Layout, LayoutRequest, plan_layout
from oai_server.engines.layout_shares import MAX_SHARE_SUM, MIN_GIB, SNAC_RESERVE_GIB, USABLE_SHARE
from oai_server.engines.placement import Placement
from oai_server.settings import Settings

H200_GIB = 139.8
CARD_COUNTS = (1, 2, 3, 4, 8)


def layout(cards: int, gib: float = H200_GIB, **settings: Any) -> Layout:
    """The layout the given settings (as the server would read them) make on `cards` fake cards."""
    return plan_layout(cards, gib, LayoutRequest.from_settings(Settings(**settings)))


def cards_of(plan_layout_: Layout, role: str) -> list[tuple[int, ...]]:
    return [plan.cards for plan in plan_layout_.role(role)]


def card_totals(lay: Layout) -> dict[int, float]:
    """Each card's shares plus SNAC's reserve."""
    totals = {card: 0.0 for card in range(lay.cards)}
    for plan in lay.engines:
        for card in plan.cards:
            totals[card] += plan.memory
    for card in lay.snac_cards():
        totals[card] += SNAC_RESERVE_GIB / lay.card_gib
    return totals


@pytest.mark.parametrize("workload", ["auto", "shared", "speech", "chat", "balanced"])
def test_one_card_is_always_todays_shared_layout(workload: str) -> None:
    lay = layout(1, placement=workload)
    assert lay.name == "shared"
    assert [plan.placement for plan in lay.engines] == [Placement(None)] * 3
    assert {plan.role: plan.memory for plan in lay.engines} == {"llm": 0.25, "tts": 0.35, "asr": 0.1}
    assert lay.snac_device == "cuda:0"
    assert bool(lay.notes) == (workload not in ("auto", "shared"))


@pytest.mark.parametrize("cards", CARD_COUNTS[1:])
def test_auto_on_several_cards_is_balanced(cards: int) -> None:
    auto, balanced = layout(cards), layout(cards, placement="balanced")
    assert auto.name == "balanced" and auto.engines == balanced.engines and auto.snac_device == balanced.snac_device


@pytest.mark.parametrize("cards", CARD_COUNTS[1:])
@pytest.mark.parametrize("workload", ["chat", "balanced"])
def test_chat_and_balanced_keep_orpheus_off_gemmas_card(cards: int, workload: str) -> None:
    lay = layout(cards, placement=workload)
    assert cards_of(lay, "llm") == [(0,)] and cards_of(lay, "asr") == [(0,)]
    assert cards_of(lay, "tts") == [(card,) for card in range(1, cards)]
    assert [plan.weight for plan in lay.role("tts")] == [1.0] * (cards - 1)
    assert lay.snac_device == "cuda:0"  # the one card without Orpheus
    assert lay.role("llm")[0].memory == 0.58 and lay.role("asr")[0].memory == 0.29  # (0.90 - 3/139.8) x 2/3, 1/3
    assert all(plan.memory == USABLE_SHARE for plan in lay.role("tts"))


@pytest.mark.parametrize("cards", CARD_COUNTS[1:])
def test_speech_puts_orpheus_on_every_card_and_halves_card_zero(cards: int) -> None:
    lay = layout(cards, placement="speech")
    assert cards_of(lay, "tts") == [(card,) for card in range(cards)]
    # SNAC in every replica's process (the default): card 0 differs only by Gemma and Whisper, idle under speech
    assert [plan.weight for plan in lay.role("tts")] == [1.0] * cards
    served = layout(cards, placement="speech", snac_in_engine=False)  # the server's SNAC on card 0 too
    assert [plan.weight for plan in served.role("tts")] == [0.5] + [1.0] * (cards - 1)
    assert cards_of(lay, "llm") == [(0,)] and cards_of(lay, "asr") == [(0,)]
    assert lay.snac_device == "cuda:0"  # every card has Orpheus; card 0's takes the fewest streams
    shares = {plan.role: plan.memory for plan in lay.engines if 0 in plan.cards}
    assert shares == {"tts": 0.43, "llm": 0.29, "asr": 0.14}  # 0.879 split 3 : 2 : 1, floored
    # SNAC in every Orpheus engine's process (the default --snac-in-engine), each card reserving its memory
    assert lay.snac_hosts() == lay.role("tts") and lay.snac_cards() == tuple(range(cards))
    assert lay.snac_card is None  # nothing decodes in the server
    assert all(plan.memory == 0.87 for plan in lay.role("tts")[1:])  # 0.90 - 3/139.8, floored
    described = lay.describe()
    assert described.count("SNAC in Orpheus's process") == cards and "one per Orpheus engine" in described
    assert served.snac_hosts() == () and served.snac_cards() == (0,) and "SNAC (~3 GiB)" in served.describe()


@pytest.mark.parametrize("cards", CARD_COUNTS)
@pytest.mark.parametrize("workload", ["auto", "shared", "speech", "chat", "balanced"])
def test_every_layout_fits_its_cards(cards: int, workload: str) -> None:
    lay = layout(cards, placement=workload)
    for card, total in card_totals(lay).items():
        assert total <= MAX_SHARE_SUM, (card, total)
        if lay.spread:
            assert total <= USABLE_SHARE + 1e-9, (card, total)
    if lay.spread:
        for plan in lay.engines:
            assert plan.memory * lay.card_gib >= MIN_GIB[plan.role]
    described = lay.describe()
    assert described.startswith(f"GPU layout '{lay.name}'")
    assert all(f"card {card}:" in described for card in range(cards))


def test_without_asr_there_is_no_whisper_engine() -> None:
    lay = layout(2, placement="chat", asr=False)
    assert lay.role("asr") == () and lay.role("llm")[0].memory == 0.87  # Gemma alone beside SNAC


def test_explicit_cards_make_auto_the_manual_layout() -> None:
    lay = layout(2, llm_gpus="0", tts_gpus="1")  # the flags measured on two H200s before layouts
    assert lay.name == "manual"
    assert cards_of(lay, "llm") == [(0,)] and cards_of(lay, "tts") == [(1,)] and cards_of(lay, "asr") == [(0,)]
    assert lay.role("asr")[0].placement == Placement(None)  # unnamed: the first visible card, as before
    assert lay.snac_device == "cuda:0"
    # a parallel size alone, even at its default value, is also a manual choice: today's behaviour
    one = layout(4, tts_data_parallel_size=1)
    assert one.name == "manual" and all(plan.placement == Placement(None) for plan in one.engines)
    dp = layout(2, tts_data_parallel_size=2)
    assert dp.role("tts")[0].placement == Placement(None, 1, 2) and cards_of(dp, "tts") == [(0, 1)]


def test_a_list_of_cards_is_replicas_and_with_data_parallel_one_vllm_engine() -> None:
    replicas = layout(2, tts_gpus="0,1")
    assert cards_of(replicas, "tts") == [(0,), (1,)]
    assert [plan.weight for plan in replicas.role("tts")] == [0.5, 1.0]  # card 0 also holds Gemma
    vllm_dp = layout(2, tts_gpus="0,1", tts_data_parallel_size=2)
    assert [plan.placement for plan in vllm_dp.role("tts")] == [Placement((0, 1), 1, 2)]
    pairs = layout(4, tts_gpus="0,1,2,3", tts_tensor_parallel_size=2)
    assert [plan.placement for plan in pairs.role("tts")] == [Placement((0, 1), 2), Placement((2, 3), 2)]


def test_named_layout_keeps_a_role_whose_cards_are_named() -> None:
    lay = layout(3, placement="chat", tts_gpus="2")
    assert lay.name == "chat"
    assert cards_of(lay, "tts") == [(2,)] and cards_of(lay, "llm") == [(0,)]
    assert lay.snac_device == "cuda:1"  # the card with no engine at all


def test_named_layout_with_vllm_data_parallel_uses_its_orpheus_cards() -> None:
    lay = layout(4, placement="chat", tts_data_parallel_size=3)
    (tts,) = lay.role("tts")
    assert tts.placement == Placement((1, 2, 3), 1, 3) and tts.memory == USABLE_SHARE
    assert any("data parallel 3" in note for note in lay.notes)
    fewer = layout(4, placement="speech", tts_data_parallel_size=2)
    assert fewer.role("tts")[0].placement == Placement((0, 1), 1, 2)
    assert any("[2, 3]" in note for note in fewer.notes)  # cards left without Orpheus are said


def test_named_layout_groups_tensor_parallel_orpheus() -> None:
    lay = layout(4, placement="speech", tts_tensor_parallel_size=2)
    assert [plan.placement for plan in lay.role("tts")] == [Placement((0, 1), 2), Placement((2, 3), 2)]
    assert [plan.weight for plan in lay.role("tts")] == [0.5, 1.0]
    odd = layout(4, placement="chat", tts_tensor_parallel_size=2)  # cards 1..3: one pair, card 3 left over
    assert cards_of(odd, "tts") == [(1, 2)] and any("[3]" in note for note in odd.notes)


def test_explicit_memory_shares_and_snac_device_are_kept() -> None:
    lay = layout(2, placement="speech", tts_gpu_memory_utilization=0.55, snac_device="cuda:1")
    assert [plan.memory for plan in lay.role("tts")] == [0.55, 0.55]
    assert lay.snac_device == "cuda:1"
    # card 0: Gemma and Whisper split what Orpheus's explicit 0.55 leaves, 2 : 1
    assert lay.role("llm")[0].memory == 0.23 and lay.role("asr")[0].memory == 0.11
    assert layout(2, placement="chat", snac_device="cpu").snac_card is None


@pytest.mark.parametrize(
    ("cards", "gib", "settings", "message"),
    [
        (0, 0.0, {}, "no GPU is visible"),
        (2, H200_GIB, {"tts_gpus": "2"}, r"tts on GPU\(s\) \[2\], which do not exist \(2 visible\)"),
        (4, H200_GIB, {"placement": "chat", "tts_gpus": "1,5"}, r"do not exist \(4 visible\)"),
        (2, H200_GIB, {"placement": "chat", "tts_tensor_parallel_size": 2}, "Orpheus needs 2 card"),
        (3, H200_GIB, {"placement": "chat", "tts_data_parallel_size": 3}, "needs 3 Orpheus cards and the layout has 2"),
        (2, H200_GIB, {"placement": "speech", "llm_tensor_parallel_size": 2}, "needs --llm-gpus"),
        (1, H200_GIB, {"tts_gpu_memory_utilization": 0.6, "llm_gpu_memory_utilization": 0.3}, "over-committed"),
        (2, 16.0, {"placement": "speech"}, "Gemma would get 3.7 GiB"),
        (2, H200_GIB, {"placement": "speech", "llm_gpu_memory_utilization": 0.9}, "leave nothing for Orpheus"),
        (2, H200_GIB, {"tts_tensor_parallel_size": 2, "tts_gpus": "0,1,2"}, "needs 2"),
    ],
)
def test_impossible_combinations_give_one_clear_error(
    cards: int, gib: float, settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        layout(cards, gib, **settings)


def test_asr_is_never_replicated() -> None:
    with pytest.raises(ValueError, match="asr: 2 GPU"):
        layout(2, asr_gpus="0,1")


def test_unknown_workload_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        plan_layout(2, H200_GIB, LayoutRequest(workload="fast"))
    with pytest.raises(ValueError):
        Settings(placement="fast")


def test_replicated_in_one_process_says_why() -> None:
    """`replicated` reaches the layout only where one process serves: one visible card, or `--replicas 1`."""
    one_card = layout(1, placement="replicated")
    assert one_card.name == "shared" and "one card is visible" in one_card.notes[0]
    forced = layout(2, placement="replicated", replicas=1)
    assert forced.name == "shared" and "--replicas 1" in forced.notes[0]


def test_engines_that_take_fewer_requests_than_the_server_admits_are_named_at_start() -> None:
    """Past an engine's max_num_seqs, admitted requests would wait inside vLLM for one to end, where neither
    the queue timeout nor a 429 reaches them: the start-up log says so, per role, counting replicas."""
    from oai_server.engines.factory import hidden_queue_warnings

    assert hidden_queue_warnings(Settings(), layout(1)) == []
    (orpheus,) = hidden_queue_warnings(Settings(tts_max_num_seqs=128), layout(1))
    assert "Orpheus" in orpheus and "--tts-max-num-seqs 128 x 1 replica(s)" in orpheus
    crowded = Settings(max_concurrent_streams=600)
    assert len(hidden_queue_warnings(crowded, layout(1, max_concurrent_streams=600))) == 2
    speech = layout(3, placement="speech", max_concurrent_streams=600)  # Orpheus on every card: 3 x 256 seqs
    assert [w for w in hidden_queue_warnings(crowded, speech) if "Orpheus" in w] == []
