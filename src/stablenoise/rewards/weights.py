"""Reading reward weights: safetensors first, pickles only through ``torch.load(weights_only=True)``."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from ..errors import StablenoiseError
from ..loading import first_line as _first_line


def read_state_dict(path: str | Path) -> dict:
    """The tensors of a .safetensors or .pt/.pth file. A pickle that needs more than tensors and plain
    containers to load (code, custom classes) is refused: unpickling it could run anything."""
    path = Path(path)
    if not path.is_file():
        raise StablenoiseError(f"reward weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise StablenoiseError(f"{path}: not a safetensors file ({_first_line(e)})") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        needed = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if needed:
            raise StablenoiseError(f"{path}: refused, this pickle needs full unpickling (it refers to "
                                   f"{needed.group(1)}, not only tensors); save its state dict or convert it to "
                                   f"safetensors") from None
        raise StablenoiseError(f"{path}: not a PyTorch weights file ({_last_line(e)})") from None
    except Exception as e:
        raise StablenoiseError(f"{path}: not a PyTorch weights file ({_first_line(e)})") from None


def _last_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.strip().startswith("Check the doc")]
    return (lines or [type(e).__name__])[-1][:200]


def require_keys(state: dict, keys, what: str, source) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        some = ", ".join(sorted(state)[:4])
        raise StablenoiseError(f"{source}: not a {what} checkpoint (missing {missing[0]!r}; it holds {some}, ...)")
