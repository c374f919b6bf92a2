"""The collector pause around verify and merge: off while any pause runs, then as before."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from evsync.gcpause import collector_paused


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    if was:
        gc.enable()
    else:
        gc.disable()


class TestCollectorPaused:
    """collector_paused() switches Python's cyclic collector off and back on."""

    def test_off_inside_and_back_on_after(self) -> None:
        """The collector is off inside the pause and on again after it."""
        gc.enable()
        with collector_paused():
            assert not gc.isenabled()
        assert gc.isenabled()

    def test_back_on_after_an_exception(self) -> None:
        """A body that raises still gives the collector back."""
        gc.enable()
        with pytest.raises(RuntimeError), collector_paused():
            raise RuntimeError("merge failed")
        assert gc.isenabled()

    def test_left_off_when_it_was_off(self) -> None:
        """A collector the application had switched off stays off after the pause."""
        gc.disable()
        with collector_paused():
            pass
        assert not gc.isenabled()

    def test_overlapping_pauses_in_two_threads(self) -> None:
        """While one thread's pause runs, another's ending does not switch the collector
        back on; it comes back when the last pause ends."""
        gc.enable()
        inside = threading.Event()
        release = threading.Event()

        def long_merge() -> None:
            with collector_paused():
                inside.set()
                release.wait(10)

        other = threading.Thread(target=long_merge)
        other.start()
        try:
            assert inside.wait(10)
            with collector_paused():
                pass
            assert not gc.isenabled()
        finally:
            release.set()
            other.join(10)
        assert gc.isenabled()
