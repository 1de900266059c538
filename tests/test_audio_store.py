"""Audio ids: the in-memory store's bounds, the SQLite file shared by the processes of one host, and the
Redis store shared by two replicas.

Redis runs for real (Debian's `redis-server`, which CI installs) on a Unix socket in a temp dir, so
no port can be raced for; the fixture fails loudly when it never answers. Expiry is checked without
waiting for it: Redis reports each key's absolute expiry (`EXPIRETIME`), and a key set to expire in
the past is gone at once.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from oai_server.serving.audio_store import MemoryAudioStore, RedisAudioStore, SqliteAudioStore

from .helpers import demo_settings, require_tool, sdk_client, start_server, wait_until


def test_memory_store_is_bounded_and_expires() -> None:
    async def run() -> None:
        store = MemoryAudioStore(max_items=2)
        now = int(time.time())
        await store.put("a", "first", now + 60)
        await store.put("b", "second", now + 60)
        await store.put("c", "third", now + 60)
        assert await store.get("a") is None  # the oldest was dropped
        assert await store.get("b") == "second" and await store.get("c") == "third" and len(store) == 2
        await store.put("old", "gone", now - 1)
        assert len(store) == 2  # "old" evicted "b"
        assert await store.get("old") is None and len(store) == 1  # expired entries are dropped on read

    asyncio.run(run())


def test_sqlite_store_is_shared_bounded_and_expires(tmp_path: Path) -> None:
    """Two stores on one file (as two replicas' processes): what one puts the other reads; the bound and the
    expiry hold as in memory."""

    async def run() -> None:
        path = tmp_path / "audio-ids.sqlite3"
        first, second = SqliteAudioStore(path, max_items=2), SqliteAudioStore(path, max_items=2)
        now = int(time.time())
        await first.put("a", "first", now + 60)
        assert await second.get("a") == "first" and await second.get("missing") is None
        await second.put("b", "second", now + 60)
        await first.put("c", "third", now + 60)
        assert await second.get("a") is None  # the oldest was dropped
        assert await first.get("b") == "second" and await first.get("c") == "third"
        await first.put("b", "again", now + 60)  # a put refreshes its entry: "c" is the oldest now
        await second.put("d", "fourth", now + 60)
        assert await first.get("c") is None and await first.get("b") == "again"
        await first.put("old", "gone", now - 1)
        assert await second.get("old") is None  # expired: never answered
        first.close()
        second.close()

    asyncio.run(run())


def redis_answers(socket_path: Path) -> bool:
    """PING over the socket."""
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        return False


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server listening only on a Unix socket in a temp dir (no TCP port to race for)."""
    binary = require_tool("redis-server", "apt-get install -y redis-server")
    socket_path = tmp_path_factory.mktemp("redis") / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: process.poll() is not None or redis_answers(socket_path), 15, 0.05)
        if not redis_answers(socket_path):
            process.kill()
            output = process.communicate(timeout=10)[0]
            pytest.fail(f"redis-server never answered on {socket_path} (exit {process.returncode}):\n{output}")
        yield f"unix://{socket_path}?db=0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_redis_store_round_trip_and_expiry(redis_url: str) -> None:
    async def run() -> None:
        store = RedisAudioStore(redis_url, prefix="test:")
        now = int(time.time())
        await store.put("audio_x", "hello", now + 60)
        assert await store.get("audio_x") == "hello"
        assert await store.get("audio_missing") is None
        assert await store._client.expiretime("test:audio_x") == now + 60  # expires exactly at expires_at
        await store.put("audio_past", "bye", now - 1)
        assert await store.get("audio_past") is None  # an expiry in the past removes the key at once
        await store._client.aclose()

    asyncio.run(run())


def test_two_replicas_share_audio_ids_through_redis(redis_url: str, demo_cache: Path, demo_models: object) -> None:
    first = start_server(demo_settings(demo_cache, redis_url=redis_url))
    second = start_server(demo_settings(demo_cache, redis_url=redis_url))
    try:
        messages = [{"role": "user", "content": "Hello"}]
        reply = sdk_client(first).chat.completions.create(
            model="gpt-4o-audio-preview",
            messages=messages,
            modalities=["text", "audio"],
            audio={"voice": "alloy", "format": "wav"},
            max_tokens=10,
            seed=3,
        )
        audio = reply.choices[0].message.audio
        assert audio.transcript
        follow = [*messages, {"role": "assistant", "audio": {"id": audio.id}}, {"role": "user", "content": "More"}]
        answer = sdk_client(second).chat.completions.create(
            model="gpt-4o-audio-preview", messages=follow, max_tokens=5, seed=3
        )
        # The second replica resolved the id to the first one's transcript: the same prompt as if it were sent.
        spelled = [*messages, {"role": "assistant", "content": audio.transcript}, {"role": "user", "content": "More"}]
        reference = sdk_client(second).chat.completions.create(
            model="gpt-4o-audio-preview", messages=spelled, max_tokens=5, seed=3
        )
        assert answer.usage.prompt_tokens == reference.usage.prompt_tokens
        assert answer.choices[0].message.content == reference.choices[0].message.content
    finally:
        first.stop()
        second.stop()
