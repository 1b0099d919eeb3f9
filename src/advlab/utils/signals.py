"""SIGTERM and SIGINT: a run stops where its work so far is saved and exits 128 + the signal's number
(143, 130) with one line saying how to resume (`advlab.runtime.task_wrapper`); the same command resumes.

`handled()` (the task wrapper, around a whole task) installs the handlers. A signal raises
`Interrupted` at once, like Ctrl-C's KeyboardInterrupt, wherever the run is: what it was doing either
writes atomically (checkpoints, cache entries, metrics.json) or is redone on resume. Inside
`deferred()` the first signal is only recorded: the code there stops at its next safe point (a
Lightning fit at the end of the current batch: `callbacks.checkpoint.StopOnSignal`; crafting after
saving the batches done, `received()`), and the region raises `Interrupted` when it ends at the latest.
A second signal raises at once, deferred or not.

Why not Lightning's own handling: Lightning turns SIGTERM into a `SystemExit` without a code (exit 0,
which a scheduler records as COMPLETED) and leaves SIGINT to Python's KeyboardInterrupt.
"""
from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A run stopped by a signal. A BaseException, like KeyboardInterrupt: `except Exception` blocks
    (a multirun job's failure record, a cache build's clean-up) let it through. `during`: what the run
    was doing when the signal came (`doing`)."""

    def __init__(self, signum: int, during: str | None = None):
        self.signum, self.during = int(signum), during
        super().__init__(f"interrupted by {name(self.signum)}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_state = {"received": None, "during": None, "count": 0, "deferred": 0, "activity": []}


def name(signum: int) -> str:
    return signal.Signals(signum).name


def received() -> int | None:
    """The signal this task received (the first one), else None."""
    return _state["received"]


def current() -> str | None:
    """What the run does now (the innermost `doing(...)`)."""
    return _state["activity"][-1] if _state["activity"] else None


def _interrupted(signum: int) -> Interrupted:
    return Interrupted(signum, _state["during"])


def _handler(signum, frame) -> None:
    if _state["received"] is None:
        _state.update(received=signum, during=current())
    _state["count"] += 1
    if _state["deferred"] and _state["count"] == 1:
        return  # the deferred region stops at its next safe point
    raise _interrupted(signum)


def _lightning_sigterm(exc: BaseException) -> bool:
    # pytorch_lightning.utilities.exceptions.SIGTERMException, named, not imported: this module stays light
    return type(exc).__name__ == "SIGTERMException"


def _reset() -> None:
    _state.update(received=None, during=None, count=0, deferred=0, activity=[])


@contextlib.contextmanager
def handled():
    """While the block runs, SIGTERM and SIGINT stop it with `Interrupted` (see the module text); any
    exception leaving it after a signal (Lightning's SIGTERMException included) leaves as `Interrupted`.
    The previous handlers are restored after it. Only the main thread can set handlers: elsewhere only
    Lightning's SIGTERMException is translated."""
    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.getsignal(s) for s in SIGNALS} if main else {}
    _reset()
    for s in previous:
        signal.signal(s, _handler)
    try:
        yield
    except Interrupted:
        raise
    except BaseException as exc:
        signum = received() or (signal.SIGTERM if _lightning_sigterm(exc) else None)
        if signum is None:
            raise
        raise _interrupted(signum) from exc
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        _reset()


@contextlib.contextmanager
def doing(what: str):
    """Name what the block does, for the interruption line ("while training the source model")."""
    _state["activity"].append(what)
    try:
        yield
    finally:
        _state["activity"].pop()


@contextlib.contextmanager
def deferred(what: str | None = None):
    """A region that stops for a signal at its own safe points (see the module text), doing `what`.
    Lightning's SIGTERMException leaving it becomes `Interrupted`."""
    with doing(what) if what else contextlib.nullcontext():
        _state["deferred"] += 1
        try:
            yield
        except BaseException as exc:
            if _lightning_sigterm(exc):
                raise _interrupted(received() or signal.SIGTERM) from exc
            raise
        finally:
            _state["deferred"] -= 1
        if received() is not None:  # the block ended before a safe point acted on the signal
            raise _interrupted(received())
