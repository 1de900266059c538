"""Audio ids of chat replies: id -> transcript until `expires_at`, bounded in size.

A later request may refer to an earlier reply as `{"role": "assistant", "audio": {"id": ...}}`;
the store answers with that reply's transcript. In-memory by default (one replica); a Redis
store serves several replicas (`redis_url`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Protocol


class AudioStore(Protocol):
    """Where audio ids live until they expire."""

    async def put(self, audio_id: str, transcript: str, expires_at: int) -> None:
        """Remember a reply's transcript until `expires_at` (Unix seconds)."""
        ...

    async def get(self, audio_id: str) -> str | None:
        """The transcript of a live id, or None if unknown or expired."""
        ...


class MemoryAudioStore:
    """An LRU-bounded, TTL-checked in-process store."""

    def __init__(self, max_items: int) -> None:
        self._max_items = max_items
        self._items: OrderedDict[str, tuple[str, int]] = OrderedDict()

    async def put(self, audio_id: str, transcript: str, expires_at: int) -> None:
        """Store and evict the oldest entries beyond the bound."""
        self._items[audio_id] = (transcript, expires_at)
        self._items.move_to_end(audio_id)
        while len(self._items) > self._max_items:
            self._items.popitem(last=False)

    async def get(self, audio_id: str) -> str | None:
        """Look up; expired entries are dropped."""
        item = self._items.get(audio_id)
        if item is None:
            return None
        transcript, expires_at = item
        if expires_at <= time.time():
            del self._items[audio_id]
            return None
        return transcript

    def __len__(self) -> int:
        return len(self._items)


class RedisAudioStore:
    """A store shared by replicas, on Redis (`pip install 'oai-server[redis]'`)."""

    def __init__(self, url: str, prefix: str = "oai-server:audio:") -> None:
        import redis.asyncio as redis  # optional dependency

        self._client = redis.from_url(url)
        self._prefix = prefix

    async def put(self, audio_id: str, transcript: str, expires_at: int) -> None:
        """SET with an absolute expiry."""
        await self._client.set(self._prefix + audio_id, transcript.encode(), exat=expires_at)

    async def get(self, audio_id: str) -> str | None:
        """GET; Redis drops expired keys itself."""
        value = await self._client.get(self._prefix + audio_id)
        if value is None:
            return None
        return value.decode() if isinstance(value, bytes) else str(value)
