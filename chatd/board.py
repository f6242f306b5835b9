"""chatd.board ~~~ Cooldown state shared by every worker of one chatd.

One small shared-memory table of fixed-size slots, one per provider or
provider+model that has failed lately. gunicorn's master makes it (the
``on_starting`` hook calls :func:`share_board`) before it forks any worker, so
every worker maps the same memory and answers alike; an app in a process that
was not forked from such a master (tests, the Flask dev server) gets its own.

The memory is an unlinked temporary file (in /dev/shm where there is one):
nothing on disk to clean up, and no tmp cleaner or stray ``rm`` can take it away.

Reads take no lock: a call looks at one 8-byte generation counter, and only
when it changed (a key was added or removed) rescans the slots into a
per-process index. A key with no slot, the common case, costs that one read
and a dict lookup. Writes (failures, and the first success after them) are rare
and serialised by a thread lock plus a POSIX record lock on the file, which the
kernel drops if its holder dies (a ``kill -9`` mid-write cannot wedge the others).

Replicas behind a load balancer each keep their own board, as Envoy's
outlier detection does.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import mmap
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

# Slots: providers (5) plus the models that failed lately. When all are taken
# by live state, a new key is not tracked (it cannot cool) until one frees.
SLOTS = 256
_HEADER = struct.Struct("<QQ")  # magic, generation
_SLOT = struct.Struct("<96sIxxxxdd256s")  # key, failures, open_until, trial_until, reason
_MAGIC = 0xC4A7D0B0A4D00001
_KEY_BYTES = 96
_REASON_BYTES = 256


@dataclass(frozen=True)
class Entry:
    """The shared state of one key: failures in a row, and the cooldown, if any.

    ``open_until`` and ``trial_until`` are ``time.monotonic()`` values, the
    same clock in every process on one machine; 0 when not set.
    """

    failures: int
    open_until: float
    trial_until: float
    reason: str


@functools.lru_cache(maxsize=4096)  # bounded: model names come from clients
def _key_bytes(key: str) -> bytes:
    raw = key.encode()
    if len(raw) > _KEY_BYTES:  # a long model name: keep the provider, hash the rest
        provider, _, model = key.partition("\0")
        raw = f"{provider}\0#{hashlib.sha256(model.encode()).hexdigest()}".encode()
    return raw


def _reason_bytes(reason: str) -> bytes:
    raw = reason.encode()
    if len(raw) > _REASON_BYTES:
        raw = raw[: _REASON_BYTES - 3].decode("utf-8", "ignore").encode() + "…".encode()
    return raw


class Board:
    """The shared table; see the module docstring."""

    def __init__(self, slots: int = SLOTS):
        directory = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._fd, path = tempfile.mkstemp(prefix="chatd-board-", dir=directory)
        os.unlink(path)  # lives as long as a process maps it
        size = _HEADER.size + slots * _SLOT.size
        os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        _HEADER.pack_into(self._map, 0, _MAGIC, 0)
        self.slots = slots
        self._lock = threading.Lock()
        self._generation = -1
        self._index: dict[bytes, int] = {}

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            os.close(fd)

    # -- reading: no lock ------------------------------------------------------

    def _current_index(self) -> dict[bytes, int]:
        generation = _HEADER.unpack_from(self._map, 0)[1]
        if generation != self._generation:
            index = {}
            for slot in range(self.slots):
                key = self._map[self._offset(slot) : self._offset(slot) + _KEY_BYTES].rstrip(b"\0")
                if key:
                    index[key] = slot
            # The generation read before the scan: a write during it rescans next time.
            self._index, self._generation = index, generation
        return self._index

    @staticmethod
    def _offset(slot: int) -> int:
        return _HEADER.size + slot * _SLOT.size

    def _read(self, slot: int, key: bytes) -> Entry | None:
        stored, failures, open_until, trial_until, reason = _SLOT.unpack_from(
            self._map, self._offset(slot)
        )
        if stored.rstrip(b"\0") != key:  # freed or reused since the index was built
            return None
        return Entry(
            failures, open_until, trial_until, reason.rstrip(b"\0").decode("utf-8", "replace")
        )

    def clear_of(self, *keys: str) -> bool:
        """Whether none of ``keys`` has state: the hot path's one check."""
        index = self._current_index()
        return not index or not any(_key_bytes(key) in index for key in keys)

    def get(self, key: str) -> Entry | None:
        """The state of ``key``, or None when it has none (it never failed, or recovered)."""
        raw = _key_bytes(key)
        slot = self._current_index().get(raw)
        return None if slot is None else self._read(slot, raw)

    def entries(self) -> dict[str, Entry]:
        """Every key with state, for listings and the cooldown gauge."""
        found = {}
        for raw, slot in list(self._current_index().items()):
            entry = self._read(slot, raw)
            if entry is not None:
                found[raw.decode("utf-8", "replace")] = entry
        return found

    # -- writing: rare, locked -------------------------------------------------

    def _locked(self):
        board = self

        class _Held:
            def __enter__(self):
                board._lock.acquire()
                try:
                    fcntl.lockf(board._fd, fcntl.LOCK_EX)
                except BaseException:
                    board._lock.release()
                    raise

            def __exit__(self, *exc):
                try:
                    fcntl.lockf(board._fd, fcntl.LOCK_UN)
                finally:
                    board._lock.release()

        return _Held()

    def _bump(self) -> None:
        generation = _HEADER.unpack_from(self._map, 0)[1]
        _HEADER.pack_into(self._map, 0, _MAGIC, generation + 1)

    def _slot_for(self, raw: bytes, create: bool) -> int | None:
        """Under the lock: the slot holding ``raw``, else a free one (claimed) if ``create``."""
        empty = stale = None
        now = time.monotonic()
        for slot in range(self.slots):
            stored, _, open_until, trial_until, _ = _SLOT.unpack_from(self._map, self._offset(slot))
            stored = stored.rstrip(b"\0")
            if stored == raw:
                return slot
            if not stored:
                empty = slot if empty is None else empty
            elif stale is None and open_until < now and trial_until < now:
                stale = slot  # not cooling now: only a count of failures is lost
        free = empty if empty is not None else stale
        if not create or free is None:
            return None
        _SLOT.pack_into(self._map, self._offset(free), raw, 0, 0.0, 0.0, b"")
        self._bump()
        return free

    def record_failure(self, key: str, threshold: int, cooldown: float, reason: str) -> bool:
        """Count a failure of ``key``; open its cooldown at ``threshold`` in a row, or
        at once after a trial. Return whether it is cooling now."""
        raw = _key_bytes(key)
        with self._locked():
            slot = self._slot_for(raw, create=True)
            if slot is None:
                return False
            offset = self._offset(slot)
            _, failures, open_until, _trial, _ = _SLOT.unpack_from(self._map, offset)
            failures += 1
            opened = bool(open_until) or failures >= threshold
            if opened:
                open_until = time.monotonic() + cooldown
            _SLOT.pack_into(
                self._map, offset, raw, failures, open_until, 0.0, _reason_bytes(reason)
            )
            return opened

    def record_success(self, key: str) -> None:
        """Forget ``key``'s failures and cooldown; no write when it has none."""
        raw = _key_bytes(key)
        if raw not in self._current_index():
            return
        with self._locked():
            slot = self._slot_for(raw, create=False)
            if slot is not None:
                _SLOT.pack_into(self._map, self._offset(slot), b"", 0, 0.0, 0.0, b"")
                self._bump()

    def claim_trial(self, key: str, until: float) -> bool:
        """Whether this call may be the one trial after ``key``'s cooldown ended."""
        raw = _key_bytes(key)
        with self._locked():
            slot = self._slot_for(raw, create=False)
            if slot is None:
                return True  # recovered meanwhile
            offset = self._offset(slot)
            _, failures, open_until, trial_until, reason = _SLOT.unpack_from(self._map, offset)
            now = time.monotonic()
            if open_until > now or trial_until > now:
                return False
            _SLOT.pack_into(self._map, offset, raw, failures, open_until, until, reason)
            return True

    def release_trial(self, key: str) -> None:
        """End a trial that never reached the upstream (it proved nothing)."""
        raw = _key_bytes(key)
        if raw not in self._current_index():
            return
        with self._locked():
            slot = self._slot_for(raw, create=False)
            if slot is not None:
                offset = self._offset(slot)
                stored, failures, open_until, _, reason = _SLOT.unpack_from(self._map, offset)
                _SLOT.pack_into(self._map, offset, stored, failures, open_until, 0.0, reason)


# The board gunicorn's master made before forking its workers (None elsewhere).
_shared: Board | None = None


def share_board() -> Board:
    """Make the board every process forked from this one will use (the master calls this)."""
    global _shared
    if _shared is None:
        _shared = Board()
    return _shared


def inherited_board() -> Board | None:
    """The board made by the process this one was forked from, if any."""
    return _shared
