"""One registry type for every kind of name that code or other packages add: rewards, model families, prompt
sets and CLI commands. A package registers through an entry-point group, read on the registry's first lookup;
nothing an entry point names is imported before it is used."""

from __future__ import annotations

from importlib import metadata
from typing import Callable, Generic, Iterator, TypeVar

from .errors import StablenoiseError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names (case-insensitive) -> entries of one kind, registered in code or by an entry point.

    Args:
        kind: what an entry is, for messages ("reward", "prompt set").
        group: the entry-point group other packages register in, or None.
        from_entry_point: ``(registry, entry_point)`` registers what an entry point names (default: the entry
            point itself under its name); called only for names not registered in code, which win.
        builtin: called once, before the first lookup, to register the built-in entries (an import, say).
    """

    def __init__(self, kind: str, group: str | None = None,
                 from_entry_point: Callable[["Registry[T]", metadata.EntryPoint], None] | None = None,
                 builtin: Callable[[], None] | None = None):
        self.kind, self.group = kind, group
        self._from_entry_point = from_entry_point or (lambda registry, ep: registry.register(ep.name, ep))
        self._builtin = builtin
        self._entries: dict[str, T] = {}
        self._scanned = False

    @staticmethod
    def key(name: str) -> str:
        return str(name).strip().lower()

    def register(self, name: str, entry: T, *, replace: bool = False,
                 same: Callable[[T, T], bool] = lambda a, b: a is b) -> T:
        """Register ``entry`` under ``name``; a different entry under a taken name needs ``replace``.

        Args:
            name: the name (compared case-insensitively, surrounding spaces dropped).
            entry: what the name means.
            replace: replace an entry already registered under the name.
            same: when an entry registered again counts as the same one (harmless).

        Returns:
            The registered entry (the first one, when the same entry is registered again).
        """
        key = self.key(name)
        if not key:
            raise StablenoiseError(f"cannot register a {self.kind} without a name")
        if key in self._entries and not replace:
            if not same(self._entries[key], entry):
                raise StablenoiseError(f"{self.kind} {name!r} is already registered")
            return self._entries[key]  # the same entry again: the first one stays
        self._entries[key] = entry
        return entry

    def entries(self) -> dict[str, T]:
        """Every entry by name, in name order: the built-ins, code registrations and entry points."""
        self._scan()
        return dict(sorted(self._entries.items()))

    def names(self) -> list[str]:
        return list(self.entries())

    def registered(self) -> list[T]:
        """Every entry in the order it was registered (entry points after what code registered before them)."""
        self._scan()
        return list(self._entries.values())

    def find(self, name: str) -> T | None:
        """The entry of ``name``.

        Args:
            name: the name (any case).

        Returns:
            Its entry, or None if it is not registered.
        """
        self._scan()
        return self._entries.get(self.key(name))

    def get(self, name: str) -> T:
        """The entry of ``name``; an unknown name is an error that lists the known ones.

        Args:
            name: the name (any case).

        Returns:
            Its entry.
        """
        entry = self.find(name)
        if entry is None:
            raise self.unknown(name)
        return entry

    def unknown(self, name: str, hint: str = "") -> StablenoiseError:
        """The error for a name that is not registered.

        Args:
            name: the name asked for.
            hint: what else would have been accepted, appended.

        Returns:
            ``StablenoiseError("unknown KIND 'NAME'; known: A, B, ...HINT")``, to raise.
        """
        return StablenoiseError(f"unknown {self.kind} {str(name)!r}; known: {', '.join(self.names())}{hint}")

    def __contains__(self, name: str) -> bool:
        return self.find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def copy(self) -> "Registry[T]":
        """An independent registry with the same entries (a test registers into it without leaking)."""
        other = Registry(self.kind, self.group, self._from_entry_point, self._builtin)
        other._entries, other._scanned = dict(self._entries), self._scanned
        return other

    def rescan(self) -> None:
        """Read the entry-point group again at the next lookup (say, after a package was installed)."""
        self._scanned = False

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        if self._builtin is not None:
            self._builtin()
        for ep in metadata.entry_points(group=self.group) if self.group else ():
            if self.key(ep.name) not in self._entries:
                self._from_entry_point(self, ep)
