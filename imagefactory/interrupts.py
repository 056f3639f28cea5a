"""Cleanup that a second Ctrl-C cannot cut short.

The first SIGINT raises KeyboardInterrupt and the `finally` blocks start removing domains, mounts,
loop devices and scratch. A second one - an impatient user, or `timeout`/CI relaying the signal
to the whole process group - used to land inside that cleanup and leave running libvirt domains
behind. `uninterrupted()` holds SIGINT and SIGTERM while the cleanup runs and raises
KeyboardInterrupt once it is done.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Run the block with SIGINT/SIGTERM held; raise KeyboardInterrupt after it if one came.
    Signal handlers belong to the main thread: elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        got.append(signum)

    old = {s: signal.signal(s, hold) for s in HELD}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if got:
        raise KeyboardInterrupt
