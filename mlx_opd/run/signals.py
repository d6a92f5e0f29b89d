"""Ctrl-C that waits for a consistent state.

`deferred_interrupt()` holds a SIGINT that arrives inside it and raises KeyboardInterrupt
when the block ends, so a block that must happen all-or-nothing (an optimizer step with
its teacher update and step counter) is never cut in half by Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager


@contextmanager
def deferred_interrupt():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt
