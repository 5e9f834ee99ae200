"""Ctrl-C and SIGTERM as requests: the first asks training to stop at the end of its current step
(which then writes a checkpoint to resume from); a second Ctrl-C interrupts at once.

SIGTERM is what Slurm sends before it preempts a job or ends it at its time limit (SIGKILL follows
after its KillWait, 30 s by default), and what torchrun sends its workers when it is itself
terminated; a Ctrl-C reaches torchrun's workers as SIGINT, forwarded by torchrun (they run in
sessions of their own, away from the terminal).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from src.utils.logging import logger

_HANDLED = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def stop_requests(enabled: bool = True) -> Iterator[threading.Event]:
    """An Event set by the first Ctrl-C or SIGTERM while the block runs. Signal handlers belong to
    the main thread: elsewhere (hyperopt trials run in threads), or when not `enabled`, the Event is
    never set and the signals work as usual."""
    requested = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def request_stop(signum, frame) -> None:
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt
        if requested.is_set():
            return
        requested.set()
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        logger.warning(f"{what}: stopping after the current step and saving a checkpoint"
                       + (" (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""))

    previous = {signum: signal.signal(signum, request_stop) for signum in _HANDLED}
    try:
        yield requested
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
