"""Which reward a name, hub id or local path means, and the loader that builds it.

A reward is registered as a factory ``factory(source, device, dtype) -> Reward``; ``source`` is the
hub id or local path given by the user, or None for the factory's default weights. Third parties
register with ``register`` or with an entry point in the group ``stablenoise.rewards`` (the shapes
world does so from its own package, so the core never imports it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import torch

from ..errors import StablenoiseError

ENTRY_POINT_GROUP = "stablenoise.rewards"


@dataclass(frozen=True)
class Entry:
    name: str
    factory: Callable
    description: str = ""
    # How a hub id or a local file/folder is recognised as this reward without its name.
    hub_ids: tuple[str, ...] = ()
    file_names: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, Entry] = {}
_entry_points_loaded = False


def register(name: str, factory: Callable, *, description: str = "", hub_ids=(), file_names=(), aliases=(),
             replace: bool = False) -> None:
    """Make ``load_reward(name)`` (and ``load_reward("name:SOURCE")``) build ``factory(source, device, dtype)``."""
    key = name.lower()
    if key in _REGISTRY and not replace and _REGISTRY[key].factory is not factory:
        raise StablenoiseError(f"reward {name!r} is already registered")
    entry = Entry(key, factory, description, tuple(hub_ids), tuple(file_names), tuple(a.lower() for a in aliases))
    _REGISTRY[key] = entry


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name.lower() not in _REGISTRY:
            # Loaded lazily: an entry point is imported only when its reward is built.
            register(ep.name, _lazy(ep), description=f"from {ep.value}")


def _lazy(ep):
    def factory(source, device, dtype):
        return ep.load()(source, device, dtype)
    return factory


def entries() -> dict[str, Entry]:
    from . import builtin  # noqa: F401  (registers the built-in rewards)

    _load_entry_points()
    return dict(sorted(_REGISTRY.items()))


def available() -> list[str]:
    return list(entries())


def _find(name: str) -> Entry | None:
    table = entries()
    name = name.lower()
    return table.get(name) or next((e for e in table.values() if name in e.aliases), None)


def resolve(name_or_path: str) -> tuple[Entry, str | None]:
    """``"hpsv2"`` -> (its entry, None); ``"hpsv2:/w/HPS_v2_compressed.pt"`` -> (entry, path); a bare hub
    id or path -> the entry that recognises it."""
    text = str(name_or_path)
    entry = _find(text)
    if entry is not None:
        return entry, None
    head, sep, tail = text.partition(":")
    if sep and tail and _find(head) is not None:
        return _find(head), tail
    path = Path(text).expanduser()
    found = [e for e in entries().values()
             if any(text.rstrip("/").lower() == h.lower() for h in e.hub_ids)
             or (path.name and any(path.name.lower() == f.lower() for f in e.file_names))]
    if len(found) > 1:  # e.g. xswu/HPSv2 holds HPS v2.0 and v2.1, whose scores are not comparable
        raise StablenoiseError(f"{text} holds more than one reward; name it: "
                               + " or ".join(f"{e.name}:{text}" for e in found))
    if found:
        return found[0], text
    if path.exists():
        raise StablenoiseError(f"cannot tell which reward {text} is; name it: NAME:{text} "
                               f"(NAME one of {', '.join(available())})")
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or sep:
        raise StablenoiseError(f"reward weights not found: {text}")
    raise StablenoiseError(f"unknown reward {text!r}; known: {', '.join(available())} "
                           f"(or NAME:HUB_ID_OR_PATH)")


def default_device(device) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals make small models many times slower on CPU
    return device


def load_reward(name_or_path, device=None, dtype=None):
    """Build a reward from a short name (``hpsv2``, ``pickscore``, ...), a hub id
    (``yuvalkirstain/PickScore_v1``), a local file or folder, or ``NAME:HUB_ID_OR_PATH``."""
    from ..backends import parse_dtype

    entry, source = resolve(name_or_path)
    if source is not None and not _is_hub_id(source):
        if not Path(source).expanduser().exists():
            raise StablenoiseError(f"reward weights not found: {source}")
        source = str(Path(source).expanduser())
    return entry.factory(source, default_device(device), parse_dtype(dtype))


def _is_hub_id(source: str) -> bool:
    return not source.startswith((".", "/", "~")) and source.count("/") == 1 and not Path(source).exists()
