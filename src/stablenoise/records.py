"""Run records: every output of stablenoise carries what made it (parameters, seeds, versions)."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable

PACKAGES = ("stablenoise", "torch", "diffusers", "transformers", "safetensors", "numpy", "accelerate")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write a file through a temporary sibling and rename it into place: readers see the old file or the
    new one, never half of one. The temporary file has one fixed name per target (kept suffix, for writers
    such as numpy that append one), is removed on any exception or interrupt, and at worst, after a hard
    kill, is left as a single dot-file that the next write of the same target replaces."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj) -> None:
    """Strict JSON (no NaN or Infinity: a non-finite number is written as null), atomically."""
    text = json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def strict_json(o):
    """``o`` with arrays and tensors as lists, paths as strings, and NaN/inf as None."""
    if hasattr(o, "tolist"):
        o = o.tolist()
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): strict_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [strict_json(v) for v in o]
    if isinstance(o, Path):
        return str(o)
    if o is None or isinstance(o, (str, int, bool)):
        return o
    raise TypeError(f"not JSON serializable: {type(o).__name__}")
