"""Progress that suits where it goes: a tqdm bar refreshing in place on a terminal, and at most a
few plain lines (at each quarter) when stdout is a file or a pipe (CI logs, W&B's output.log)."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("advlab.progress")


def interactive() -> bool:
    """True when the user watches a terminal (tqdm's in-place refresh then reads well)."""
    return all(bool(getattr(stream, "isatty", lambda: False)()) for stream in (sys.stdout, sys.stderr))


class QuarterLines:
    """The part of tqdm's interface advlab uses (update, close, context manager, iteration), printing
    one log line when 25 %, 50 %, 75 % and 100 % of `total` are done."""

    def __init__(self, iterable=None, total: int | None = None, desc: str = "", disable: bool = False, **_tqdm_kwargs):
        self.iterable = iterable
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.desc, self.disable, self.n = desc or "progress", disable, 0
        self._quarter, self._started = 0, time.time()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.disable or not self.total:
            return
        quarter = min(4, int(4 * self.n / self.total))
        if quarter > self._quarter:
            self._quarter = quarter
            log.info("%s: %d/%d (%d%%, %.0f s)", self.desc, self.n, self.total, 25 * quarter, time.time() - self._started)

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(iterable=None, **kwargs):
    """`tqdm(iterable, **kwargs)` on a terminal, `QuarterLines` elsewhere."""
    if interactive():
        from tqdm.auto import tqdm

        return tqdm(iterable, **kwargs)
    return QuarterLines(iterable, **kwargs)
