"""Ctrl-C and SIGTERM as a request to stop, honoured between chunks.

A KeyboardInterrupt raised by the default handler lands in whatever bytecode runs at
that moment: inside ``threading.Thread.start()`` it left Python's condition lock
half-released (``RuntimeError: release unlocked lock``, exit 1 instead of 130), and no
code can be made safe against an exception at every instruction. So while a run writes,
the handlers only set a flag; the engine calls :func:`check` between chunks (and while it
waits for a buffer), where stopping is a plain ``raise`` in our own code, with every
thread and file in a known state.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: list[int] = []  # the signals received while requests() was active, oldest first


def requested() -> bool:
    """A stop was asked for and not yet acted on."""
    return bool(_requested)


def check() -> None:
    """Stop here if a stop was asked for: raise KeyboardInterrupt (the run's cleanup catches it)."""
    if _requested:
        _requested.clear()
        raise KeyboardInterrupt


@contextlib.contextmanager
def requests() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM only set the flag :func:`check` reads.

    A signal the block never checked is delivered to the previous handler when the block
    ends (e.g. the CLI's: KeyboardInterrupt, one line, exit 130), so it is never lost.
    Only the main thread can set handlers; elsewhere (a library caller's worker thread)
    the block changes nothing and signals keep their usual effect.
    """
    _requested.clear()
    with _held(_requested):
        yield


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then act as they would have.

    The writer holds them around the few renames that swap a student into OUT:
    interrupted halfway, OUT would hold neither student.
    """
    with _held([]):
        yield


@contextlib.contextmanager
def _held(pending: list[int]) -> Iterator[None]:
    """SIGINT and SIGTERM only append to ``pending`` inside the block; the first one left
    there is delivered to the handler it would have reached when the block ends. Only the
    main thread can set handlers; elsewhere signals are not delivered to the thread anyway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for sig in SIGNALS:
        try:
            # Only an append: an exception from a handler would land in arbitrary code again.
            previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
        except (ValueError, OSError):
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if pending:
            sig = pending[0]
            pending.clear()
            handler = previous.get(sig)
            if callable(handler):
                handler(sig, None)
            elif handler in (signal.SIG_DFL, None):
                signal.raise_signal(sig)
