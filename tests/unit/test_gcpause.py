"""The collector pause around verify and merge: off while any pause runs, then as before."""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Iterator

import pytest

from evsync import gcpause
from evsync.gcpause import collector_paused


class Node:
    """An object that can sit in a reference cycle and be watched by a weakref."""

    def __init__(self) -> None:
        self.other: Node | None = None


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

    def test_pauses_that_overlap_for_good_still_collect(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When pauses keep overlapping past MAX_PAUSE_SECONDS, the end of any of them
        collects the cycles made meanwhile, though the collector stays off."""
        monkeypatch.setattr(gcpause, "MAX_PAUSE_SECONDS", 0.0)
        gc.enable()
        with collector_paused():
            with collector_paused():
                a, b = Node(), Node()
                a.other, b.other = b, a
                watch = weakref.ref(a)
                del a, b
                assert watch() is not None  # a cycle: reference counting cannot free it
            assert watch() is None
            assert not gc.isenabled()
        assert gc.isenabled()
