"""The shared cooldown board's cost on the hot path, as ratios (issue 10).

Times, per call, what the dispatcher does before and after each upstream
attempt with no failures on record (the common case): before_call + success.
Compared with the per-worker breaker it replaced (one attribute read before,
one after) and with an empty function call, so the numbers read as ratios on
any machine::

    .venv/bin/python bench/board.py
"""

from __future__ import annotations

import timeit

from chatd.board import Board
from chatd.resilience import Cooldowns

N = 200_000


class OldBreaker:
    """The per-worker breaker's fast path: closed, no lock."""

    _open_until = 0.0
    _consecutive = 0

    def before_call(self):
        if not self._open_until:
            return

    def record_success(self):
        if self._consecutive or self._open_until:
            pass


def main() -> None:
    cooldowns = Cooldowns(Board(), {"openrouter": "openrouter.ai"})
    for n in range(50):  # other models on record elsewhere on the board
        cooldowns.board.record_failure(f"openrouter\0busy-{n}", 5, 30, "500")
    old = OldBreaker()

    def empty():
        pass

    def shared():
        cooldowns.before_call("openrouter", "meta/llama", 5.0)
        cooldowns.success("openrouter", "meta/llama")

    def per_worker():
        old.before_call()
        old.record_success()

    results = {}
    for name, function in (("empty call", empty), ("old breaker", per_worker), ("board", shared)):
        results[name] = min(timeit.repeat(function, number=N, repeat=5)) / N
    base = results["empty call"]
    for name, secs in results.items():
        print(f"{name:12} {secs * 1e9:8.0f} ns  {secs / base:6.1f}x an empty call")
    print(f"board / old breaker: {results['board'] / results['old breaker']:.1f}x")


if __name__ == "__main__":
    main()
