"""Names that other packages register through an entry point group, imported only when used."""

from __future__ import annotations

from importlib import metadata
from typing import Callable, Container


def register_entry_points(group: str, known: Container[str], register: Callable[[str, metadata.EntryPoint], None]
                          ) -> None:
    """Call ``register(name, entry_point)`` for each entry point of ``group`` whose (lower-cased) name is
    not in ``known``: a name registered in code wins over an entry point. Nothing is imported here;
    ``entry_point.load()`` imports the object when the caller first needs it."""
    for ep in metadata.entry_points(group=group):
        if ep.name.lower() not in known:
            register(ep.name, ep)
