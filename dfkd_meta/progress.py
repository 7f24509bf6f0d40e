"""Progress of long work: a tqdm bar on a terminal, a plain line every few seconds elsewhere.

Without a terminal (CI logs, ``nohup``, a pipe) a redrawn bar is either hidden (tqdm's default) or
one endless line of carriage returns; a line every ``DFKD_META_PROGRESS_EVERY`` seconds (default 5)
on stderr reads well in a log and shows the run is alive.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

EVERY_ENV = "DFKD_META_PROGRESS_EVERY"
DEFAULT_EVERY_S = 5.0


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True, leave: bool = False, initial: int = 0, stream=None):
    """An object with tqdm's ``update``, ``set_postfix`` and ``close`` that iterates over ``iterable``."""
    stream = stream or sys.stderr
    if not enabled:
        return Silent(iterable)
    if _is_terminal(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=stream)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, stream=stream,
                        every=line_interval())


def line_interval() -> float:
    try:
        value = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value >= 0 else DEFAULT_EVERY_S


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Silent:
    """Progress turned off: iterates and ignores the rest."""

    def __init__(self, iterable: Iterable | None = None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress(Silent):
    """``desc: n/total unit (p%), rate unit/s, elapsed, ~left, postfix``, at most once per ``every`` seconds."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
                 initial: int = 0, stream=None, every: float = DEFAULT_EVERY_S, clock=time.monotonic) -> None:
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.unit, self.stream, self.every, self.clock = total, desc, unit, stream, every, clock
        self.n, self.initial, self.postfix, self.lines = initial, initial, "", 0
        self.start = self.last = clock()

    def __iter__(self) -> Iterator:
        for item in super().__iter__():
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if self.lines:  # a run long enough to have reported says where it ended
            self._line(self.clock())

    def _line(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        parts = [f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{rate:.3g} {self.unit}/s, {elapsed:.0f} s elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"~{(self.total - self.n) / rate:.0f} s left")
        if self.postfix:
            parts.append(self.postfix)
        print(f"{self.desc}: " + ", ".join(parts) if self.desc else ", ".join(parts), file=self.stream, flush=True)
        self.lines += 1
