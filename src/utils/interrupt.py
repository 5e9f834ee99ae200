"""Ctrl-C as a request: the first SIGINT asks training to stop at the end of its current step
(which then writes a checkpoint to resume from); a second one interrupts at once."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from src.utils.logging import logger


@contextmanager
def stop_requests(enabled: bool = True) -> Iterator[threading.Event]:
    """An Event set by the first Ctrl-C while the block runs. Signal handlers belong to the main
    thread: elsewhere (hyperopt trials run in threads), or when not `enabled`, the Event is never
    set and Ctrl-C works as usual."""
    requested = threading.Event()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return

    def request_stop(signum, frame) -> None:
        requested.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C: KeyboardInterrupt
        logger.warning("Ctrl-C: stopping after the current step and saving a checkpoint "
                       "(press Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, request_stop)
    try:
        yield requested
    finally:
        signal.signal(signal.SIGINT, previous)
