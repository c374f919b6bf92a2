"""Bounded name sets: what evsync remembers of names from the bucket or from hints (bad,
gone, too old) must not grow without end when those names are hostile."""

from __future__ import annotations


class BoundedNames:
    """A set of names that forgets the oldest past ``limit``; ``add`` refreshes a name."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._names: dict[str, None] = {}  # insertion-ordered: the oldest first

    def add(self, name: str) -> None:
        """Remember ``name`` (as the newest), forgetting the oldest past the limit."""
        self._names.pop(name, None)
        self._names[name] = None
        while len(self._names) > self.limit:
            del self._names[next(iter(self._names))]

    def discard(self, name: str) -> None:
        """Forget ``name`` if it is remembered."""
        self._names.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)
