"""Elapsed time, printed progress and the time budget of a study."""

from __future__ import annotations

import time


class Clock:
    """Elapsed time, printed progress and the time budget."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.deadline = self.start + budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", flush=True)
