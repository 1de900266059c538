"""Audio ids of chat replies: id -> transcript until `expires_at`, bounded in size.

A later request may refer to an earlier reply as `{"role": "assistant", "audio": {"id": ...}}`;
the store answers with that reply's transcript. In-memory by default (one process); a SQLite file
serves the server processes of one host (`audio_store_path`, which `--placement replicated` sets for
its replicas), a Redis store servers on several hosts (`redis_url`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path
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


class SqliteAudioStore:
    """A store shared by the processes of one host through a SQLite file (WAL, so readers never wait for a
    writer); bounded like the in-memory one. Each call runs in a worker thread, off the event loop."""

    def __init__(self, path: Path, max_items: int) -> None:
        self._max_items = max_items
        self._lock = threading.Lock()  # one connection, used from worker threads one at a time
        self._db = sqlite3.connect(path, timeout=10, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS audio (id TEXT PRIMARY KEY, transcript TEXT NOT NULL, expires_at INTEGER)"
            )

    async def put(self, audio_id: str, transcript: str, expires_at: int) -> None:
        """Store, drop expired entries, and evict the oldest beyond the bound."""
        await asyncio.to_thread(self._put, audio_id, transcript, expires_at)

    async def get(self, audio_id: str) -> str | None:
        """The transcript of a live id."""
        return await asyncio.to_thread(self._get, audio_id)

    def _put(self, audio_id: str, transcript: str, expires_at: int) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("INSERT OR REPLACE INTO audio VALUES (?, ?, ?)", (audio_id, transcript, expires_at))
            self._db.execute("DELETE FROM audio WHERE expires_at <= ?", (int(time.time()),))
            self._db.execute(
                "DELETE FROM audio WHERE rowid NOT IN (SELECT rowid FROM audio ORDER BY rowid DESC LIMIT ?)",
                (self._max_items,),
            )

    def _get(self, audio_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT transcript FROM audio WHERE id = ? AND expires_at > ?", (audio_id, int(time.time()))
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._db.close()
