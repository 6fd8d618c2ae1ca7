"""Which reward a name, hub id or local path means, and the loader that builds it.

A reward is registered as a factory ``factory(source, device, dtype) -> Reward``; ``source`` is the
hub id or local path given by the user, or None for the factory's default weights. Third parties
register with ``register`` or with an entry point in the group ``stablenoise.rewards`` (the shapes
world does so from its own package, so the core never imports it); both land in ``REWARDS``, a
:class:`stablenoise.plugins.Registry`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import StablenoiseError
from ..plugins import Registry

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


def register(name: str, factory: Callable, *, description: str = "", hub_ids=(), file_names=(), aliases=(),
             replace: bool = False) -> None:
    """Make ``load_reward(name)`` (and ``load_reward("name:SOURCE")``) build ``factory(source, device, dtype)``.

    Args:
        name: the reward's short name.
        factory: ``factory(source, device, dtype) -> Reward``; source is a hub id or path, or None.
        description: one line on what it is.
        hub_ids, file_names: how a hub id or a local file or folder is recognised as this reward.
        aliases: other names it answers to.
        replace: replace a reward already registered under the name.
    """
    entry = Entry(Registry.key(name), factory, description, tuple(hub_ids), tuple(file_names),
                  tuple(a.lower() for a in aliases))
    REWARDS.register(name, entry, replace=replace, same=lambda a, b: a.factory is b.factory)


def _from_entry_point(registry: Registry, ep) -> None:
    def factory(source, device, dtype):  # imported only now, when the reward is built
        return ep.load()(source, device, dtype)

    registry.register(ep.name, Entry(Registry.key(ep.name), factory, f"from {ep.value}"))


def _builtin() -> None:
    from . import builtin  # noqa: F401  (registers the built-in rewards)


REWARDS: Registry[Entry] = Registry("reward", ENTRY_POINT_GROUP, _from_entry_point, _builtin)


def entries() -> dict[str, Entry]:
    return REWARDS.entries()


def available() -> list[str]:
    return REWARDS.names()


def _find(name: str) -> Entry | None:
    return REWARDS.find(name) or next((e for e in REWARDS.entries().values() if name.lower() in e.aliases), None)


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
    raise REWARDS.unknown(text, " (or NAME:HUB_ID_OR_PATH)")


def default_device(device) -> torch.device:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals make small models many times slower on CPU
    return device


def load_reward(name_or_path, device=None, dtype=None):
    """Build a reward from a short name (``hpsv2``, ``pickscore``, ...), a hub id
    (``yuvalkirstain/PickScore_v1``), a local file or folder, or ``NAME:HUB_ID_OR_PATH``.

    Args:
        name_or_path: the short name, hub id, local path, or ``NAME:HUB_ID_OR_PATH``.
        device: where the reward runs (None: cuda if available, else cpu).
        dtype: as in :func:`stablenoise.load` (None: the reward's own default).

    Returns:
        The :class:`~stablenoise.rewards.base.Reward`.

    Raises:
        StablenoiseError: an unknown name, weights that are not found, a source that holds more than one reward
            or whose reward cannot be told, or an unknown dtype.
    """
    from ..backends import parse_dtype

    entry, source = resolve(name_or_path)
    if source is not None and not _is_hub_id(source):
        if not Path(source).expanduser().exists():
            raise StablenoiseError(f"reward weights not found: {source}")
        source = str(Path(source).expanduser())
    return entry.factory(source, default_device(device), parse_dtype(dtype))


def _is_hub_id(source: str) -> bool:
    return not source.startswith((".", "/", "~")) and source.count("/") == 1 and not Path(source).exists()
