"""A second Ctrl-C during cleanup is held until the cleanup is done (imagefactory/interrupts.py)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from imagefactory.interrupts import uninterrupted


def test_a_signal_during_cleanup_waits_for_it() -> None:
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt), uninterrupted():
        os.kill(os.getpid(), signal.SIGINT)  # what `timeout` relays, or a second Ctrl-C
        os.kill(os.getpid(), signal.SIGTERM)
        done.append("domains destroyed")
        done.append("scratch removed")
    assert done == ["domains destroyed", "scratch removed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_no_signal_no_interrupt() -> None:
    with uninterrupted():
        pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_outside_the_main_thread_it_is_a_no_op() -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with uninterrupted():
                pass
        except BaseException as e:  # signal.signal would raise ValueError here
            errors.append(e)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert errors == []
