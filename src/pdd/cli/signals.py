"""Ctrl-C and SIGTERM during a long command: exit 130 / 143 with a message saying how to continue.

Schedulers stop jobs with SIGTERM (SLURM, Kubernetes, ``docker stop``); a stopped job must not look
like a success. Inside :func:`interruptible`, both signals are recorded and raise
``KeyboardInterrupt`` at once, the one exception every layer treats as "stop now" (Lightning runs
its graceful shutdown for it and then calls ``sys.exit(1)``; its own SIGTERM flag would only be
looked at between training batches). Whatever exception then leaves the block, the recorded signal
decides: :class:`Interrupted` carries the exit status and the message, and ``pdd.cli.main`` prints it.

A command calls it as::

    with interruptible("pdd predict", lambda: f"finished scans are kept in {out}; "
                       f"continue with `pdd predict --resume {out}`"):
        ...
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

__all__ = ["Interrupted", "interruptible"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A command stopped by a signal; ``status`` is 128 + the signal number (130 / 143).

    A ``BaseException`` so that no ``except Exception`` on the way up mistakes it for a failure.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.status = 128 + signum
        self.message = message


@contextlib.contextmanager
def interruptible(command: str, advice: Callable[[], str]) -> Iterator[None]:
    """Run the block so that SIGINT / SIGTERM end it with :class:`Interrupted`.

    ``advice()`` is called after the block has unwound (so it can look at what was left on disk)
    and says where the results are and how to continue; the message is
    ``"<command> stopped by <SIGNAL>; <advice>"``. Outside the main thread signals cannot be
    caught, and the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def stop(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, stop) for signum in _SIGNALS}
    try:
        try:
            yield
        except BaseException as exc:
            if not received:
                raise
            _ignore_signals()  # a second Ctrl-C must not cut the clean-up and the message short
            raise _interrupted(command, received[0], advice) from exc
        if received:  # someone on the way swallowed the KeyboardInterrupt
            _ignore_signals()
            raise _interrupted(command, received[0], advice)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted(command: str, signum: int, advice: Callable[[], str]) -> Interrupted:
    name = signal.Signals(signum).name
    return Interrupted(signum, f"{command} stopped by {name}; {advice()}")


def _ignore_signals() -> None:
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
