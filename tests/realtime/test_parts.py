"""The session's parts without a server: conversation items, truncation, the input buffer, audio formats."""

from __future__ import annotations

import asyncio
import base64
import math

import numpy as np
import pytest

from oai_server.errors import APIError
from oai_server.pipeline.chat_prompt import Turn
from oai_server.protocol.realtime import AssistantMessage, InputText, OutputAudio, SystemMessage, UserMessage
from oai_server.protocol.realtime.audio import PCMFormat, PCMUFormat
from oai_server.serving.realtime.audio_out import OutputEncoder
from oai_server.serving.realtime.conversation import ROOT, ConversationItems, StoredItem, turns_of
from oai_server.serving.realtime.input_audio import InputAudio, InputAudioBuffer, InputDecoder
from oai_server.serving.reply_events import SpokenTranscript


def user(item_id: str, text: str) -> StoredItem:
    return StoredItem(UserMessage(id=item_id, content=[InputText(text=text)]))


def spoken(item_id: str, segments: list[tuple[str, int]], speed: float = 1.0) -> StoredItem:
    """An assistant item whose segments last the given samples each."""
    transcript = SpokenTranscript()
    for text, samples in segments:
        transcript.start_segment(text)
        transcript.add_audio(b"\0\0" * samples)
    item = AssistantMessage(id=item_id, content=[OutputAudio(transcript=transcript.text)])
    return StoredItem(item, spoken=transcript, speed=speed)


def test_items_insert_after_root_or_an_item_and_drop_the_oldest_past_the_bound() -> None:
    items = ConversationItems(max_items=3)
    items.add(user("a", "one"))
    items.add(user("b", "two"), ROOT)
    items.add(user("c", "three"), "b")
    assert [s.id for s in items.items] == ["b", "c", "a"]
    assert items.previous_id(items.items[1]) == "b" and items.previous_id(items.items[0]) is None
    with pytest.raises(KeyError):
        items.add(user("x", "?"), "missing")
    assert [s.id for s in items.items] == ["b", "c", "a"]
    oldest = items.items[0]
    oldest.audio = np.zeros(10, np.int16)
    dropped = items.add(user("d", "four"))
    assert dropped == [oldest] and oldest.audio is None and [s.id for s in items.items] == ["c", "a", "d"]
    assert items.delete("a") is not None and items.delete("a") is None


async def test_turns_use_the_heard_text_and_end_with_a_user_turn() -> None:
    reply = spoken("r", [("First part said here.", 24000), ("Second part never heard.", 24000)])
    heard = reply.truncate(500)  # half of the first segment: its first half of words
    assert heard == "First part" and reply.audio_ms == 500
    system = StoredItem(SystemMessage(id="s", content=[InputText(text="Be brief.")]))
    pending = StoredItem(UserMessage(id="u", content=[]))
    turns = await turns_of([system, user("q", "Hi"), reply])
    assert turns == [Turn("system", "Be brief."), Turn("user", "Hi"), Turn("assistant", "First part"), Turn("user", "")]
    assert await turns_of([pending]) == [Turn("user", "")]


async def test_a_user_turn_waits_for_its_transcription() -> None:
    from oai_server.protocol.realtime import InputAudio as InputAudioPart

    item = StoredItem(UserMessage(id="u", content=[InputAudioPart()]))
    item.transcript = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(turns_of([item]))
    await asyncio.sleep(0)
    assert not waiting.done()
    item.transcript.set_result("hello there")
    assert await waiting == [Turn("user", "hello there")]
    item.transcript = asyncio.get_running_loop().create_future()
    item.transcript.cancel()  # the item was dropped: its text is empty, nothing raises
    assert await turns_of([item]) == [Turn("user", "")]


def test_truncation_at_a_faster_speed_maps_back_to_the_synthesized_audio() -> None:
    reply = spoken("r", [("One two three four.", 48000)], speed=2.0)  # 2 s synthesized, 1 s played
    assert reply.audio_ms == 1000
    assert reply.truncate(500) == "One two"  # 500 ms played = 1 s of the synthesized audio = half the words


def test_input_buffer_is_addressed_by_absolute_offsets() -> None:
    buffer = InputAudioBuffer()
    for value in (1, 2, 3):
        buffer.append(np.full(100, value, np.int16))
    assert (buffer.start, buffer.end, buffer.samples) == (0, 300, 300)
    taken = buffer.take(150, 250)
    assert taken.tolist() == [2] * 50 + [3] * 50 and (buffer.start, buffer.end) == (250, 300)
    assert buffer.take(0, 260).tolist() == [3] * 10  # clipped to what is still buffered
    buffer.drop_before(280)
    assert buffer.take_all().tolist() == [3] * 20 and buffer.samples == 0
    assert buffer.arrival(120) is not None and buffer.arrival(10_000) is None


def test_input_formats_and_their_errors() -> None:
    assert len(InputDecoder(PCMUFormat()).decode(base64.b64encode(b"\xff" * 80).decode())) == 240  # 8 -> 24 kHz
    with pytest.raises(APIError) as odd:
        InputDecoder(PCMFormat()).decode(base64.b64encode(b"\0\0\0").decode())
    assert odd.value.code == "invalid_value" and odd.value.param == "audio"
    with pytest.raises(APIError):
        InputDecoder(PCMFormat()).decode("not base64!")


async def test_commit_needs_100_ms_and_the_buffer_is_bounded_without_vad() -> None:
    side = InputAudio(None, max_seconds=0.2)
    side.configure(PCMFormat(), None)
    await side.append(base64.b64encode(b"\0\0" * 2000).decode(), responding=False)  # 83 ms
    with pytest.raises(APIError) as small:
        side.commit()
    assert small.value.code == "input_audio_buffer_commit_empty"
    await side.append(base64.b64encode(b"\0\0" * 2000).decode(), responding=False)
    assert len(side.commit()) == 4000 and side.buffer.samples == 0
    with pytest.raises(APIError) as full:
        await side.append(base64.b64encode(b"\0\0" * 5000).decode(), responding=False)
    assert full.value.code == "input_audio_buffer_full"


@pytest.mark.parametrize(("fmt", "per_sample"), [(PCMFormat(), 2), (PCMUFormat(), 1 / 3)])
def test_output_encoder_byte_counts(fmt: object, per_sample: float) -> None:
    encoder = OutputEncoder(fmt)  # type: ignore[arg-type]
    chunks = [np.full(n, 1000, "<i2").tobytes() for n in (2048, 2048, 1808)]
    total = sum(len(base64.b64decode(encoder.encode(c) or "")) for c in chunks) + len(encoder.flush() or "")
    assert total == math.ceil(5904 * per_sample)


def test_output_encoder_speed_changes_the_duration() -> None:
    encoder = OutputEncoder(PCMFormat(), speed=1.5)
    pcm = (np.sin(np.arange(48000) / 10) * 8000).astype("<i2").tobytes()
    out = b"".join(base64.b64decode(encoder.encode(pcm[i : i + 4096]) or "") for i in range(0, len(pcm), 4096))
    out += base64.b64decode(encoder.flush() or "")
    assert abs(len(out) // 2 - 32000) < 32000 * 0.02  # 2 s at 1.5x is 1.33 s
