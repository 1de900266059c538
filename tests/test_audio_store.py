"""Audio ids: the in-memory store's bounds, and the Redis store shared by two replicas."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from oai_server.serving.audio_store import MemoryAudioStore, RedisAudioStore

from .conftest import demo_settings, start_server


def test_memory_store_is_bounded_and_expires() -> None:
    async def run() -> None:
        store = MemoryAudioStore(max_items=2)
        now = int(time.time())
        await store.put("a", "first", now + 60)
        await store.put("b", "second", now + 60)
        await store.put("c", "third", now + 60)
        assert await store.get("a") is None  # the oldest was dropped
        assert await store.get("c") == "third" and len(store) == 2
        await store.put("old", "gone", now - 1)
        assert await store.get("old") is None

    asyncio.run(run())


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port (CI installs Debian's redis-server)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.terminate()
    process.wait(timeout=10)


def test_redis_store_round_trip_and_expiry(redis_url: str) -> None:
    async def run() -> None:
        store = RedisAudioStore(redis_url, prefix="test:")
        now = int(time.time())
        await store.put("audio_x", "hello", now + 60)
        assert await store.get("audio_x") == "hello"
        assert await store.get("audio_missing") is None
        await store.put("audio_short", "bye", now + 1)
        await asyncio.sleep(2.1)
        assert await store.get("audio_short") is None

    asyncio.run(run())


def test_two_replicas_share_audio_ids_through_redis(redis_url: str, demo_cache: Path, demo_models: object) -> None:
    first = start_server(demo_settings(demo_cache, redis_url=redis_url))
    second = start_server(demo_settings(demo_cache, redis_url=redis_url))
    try:
        a = OpenAI(base_url=f"{first.url}/v1", api_key="x", max_retries=0)
        b = OpenAI(base_url=f"{second.url}/v1", api_key="x", max_retries=0)
        messages = [{"role": "user", "content": "Hello"}]
        reply = a.chat.completions.create(
            model="gpt-4o-audio-preview",
            messages=messages,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            max_tokens=10,
        )
        audio_id = reply.choices[0].message.audio.id
        follow = [*messages, {"role": "assistant", "audio": {"id": audio_id}}, {"role": "user", "content": "More"}]
        answer = b.chat.completions.create(model="gpt-4o-audio-preview", messages=follow, max_tokens=5)
        assert answer.choices[0].message.content is not None
    finally:
        first.stop()
        second.stop()
