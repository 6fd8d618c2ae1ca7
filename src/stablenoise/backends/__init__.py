"""Build a backend from a model id, a local folder, or a pipeline the user already has.

Which adapter wraps a pipeline is decided by its class, once, here; the algorithms never ask.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import StablenoiseError
from ..loading import from_pretrained
from .base import DiffusersBackend
from .denoiser import Conditioning, Denoiser, uses_cfg
from .flow import FlowBackend
from .flux import FluxBackend
from .protocol import Backend, Defaults
from .registry import Family, families, register_family, shipped_models
from .sd import StableDiffusionBackend
from .sd3 import StableDiffusion3Backend
from .sdxl import StableDiffusionXLBackend
from .shap_e import ShapEBackend

DEFAULT_MODEL = "shapes"  # the CLI's default: the shapes world's shipped model (registered by entry point)


def from_pipeline(pipe, name: str | None = None, height: int | None = None, width: int | None = None,
                  timestep_spacing: str | None = None, inversion_point: str | None = None) -> DiffusersBackend:
    """Wrap a loaded diffusers pipeline in the backend of its registered family.

    The DDIM round trip takes the pipeline scheduler's config (see :func:`stablenoise.ddim.settings`). The family
    is decided by the pipeline's class (the most derived registered class wins); a name containing "turbo" gets
    the family's turbo defaults, where it has them.

    Args:
        pipe: a loaded diffusers pipeline of a registered family.
        name: the model's name (default: the pipeline's ``name_or_path``, else the family's name).
        height, width: the image size, for families without a fixed size (None: the network's native size).
        timestep_spacing: overrides the scheduler's spacing ("leading", "trailing" or "linspace").
        inversion_point: where inversion evaluates the network ("destination" or "source"; None: the family's,
            see :mod:`stablenoise.ddim`).

    Returns:
        The backend wrapping ``pipe``.

    Raises:
        StablenoiseError: a pipeline class no registered family supports, ``height``/``width`` for a family with a
            fixed image size, or an unknown ``inversion_point``.
    """
    scheduler_overrides = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    name = name or str(getattr(pipe, "name_or_path", "") or getattr(pipe.config, "_name_or_path", "") or "")
    mro = type(pipe).__mro__
    # The most derived registered class wins; among families of one class, the latest registered (sorted is stable).
    matching = sorted((f for f in families() if isinstance(pipe, f.pipeline)), key=lambda f: mro.index(f.pipeline))
    if not matching:
        supported = ", ".join(f.pipeline.__name__ for f in families())
        raise StablenoiseError(f"unsupported pipeline class {type(pipe).__name__}; supported: {supported}")
    fam = matching[0]
    defaults = fam.defaults
    if fam.config_defaults is not None:
        defaults = fam.config_defaults(pipe)
    if fam.turbo_defaults is not None and "turbo" in name.lower():
        defaults = fam.turbo_defaults
    if fam.fixed_size and (height or width):
        raise StablenoiseError(f"the {fam.name} model has a fixed image size")
    kwargs = {} if fam.fixed_size else {"height": height, "width": width}
    if inversion_point is not None:  # only when asked: a registered family's backend may predate the option
        kwargs["inversion_point"] = inversion_point
    return fam.backend(pipe=pipe, name=name or fam.name, defaults=defaults,
                       scheduler_overrides=scheduler_overrides, **kwargs)


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise StablenoiseError(f"unknown dtype {dtype!r}; use one of {', '.join(table)}")
    return table[dtype]


def parse_device(device: str | torch.device | None) -> torch.device:
    """The device to run on (default: cuda if available), refused at once if this machine lacks it."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise StablenoiseError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cpu":
        return device
    backend = {"cuda": torch.cuda, "mps": getattr(torch.backends, "mps", None)}.get(device.type,
                                                                                    getattr(torch, device.type, None))
    available = getattr(backend, "is_available", lambda: False)()
    if not available:
        raise StablenoiseError(f"device {str(device)!r} is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise StablenoiseError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s)")
    return device


def _looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~")) or model.count("/") != 1 or "\\" in model


def load(model: str | Path | None = None, device: str | torch.device | None = None,
         dtype: str | torch.dtype | None = None, *, height: int | None = None, width: int | None = None,
         variant: str | None = None, timestep_spacing: str | None = None, inversion_point: str | None = None,
         compile: bool = False) -> DiffusersBackend:
    """Load a backend from a hub id (``stabilityai/sdxl-turbo``) or a local pipeline folder.

    ``None`` or ``"shapes"`` is the shapes-world model shipped inside the package (no network); other
    registered families may ship more names (``shapes-cosine``).

    Args:
        model: a hub id, a local pipeline folder, or a shipped model name (None: ``"shapes"``).
        device: "cpu", "cuda", "cuda:N", "mps" or a torch.device (None: cuda if available, else cpu).
        dtype: "float32"/"fp32", "float16"/"fp16", "bfloat16"/"bf16" or a torch.dtype (None: as diffusers loads it).
        height, width: the image size of SD/SDXL (default: the UNet's native size).
        variant: which weight files to load, as in diffusers (``"fp16"``).
        timestep_spacing: as in :func:`from_pipeline`.
        inversion_point: as in :func:`from_pipeline`.
        compile: run the network through ``torch.compile``.

    Returns:
        The backend, on ``device``, progress bars of the pipeline off.

    Raises:
        StablenoiseError: an unknown dtype, a device this machine lacks, a folder that is not a diffusers pipeline,
            a model path that does not exist, a model that cannot be loaded, or what :func:`from_pipeline` refuses.
    """
    from diffusers import DiffusionPipeline

    dtype = parse_dtype(dtype)
    device = parse_device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals make small UNets ~18x slower on CPU
    model = str(model) if model is not None else DEFAULT_MODEL
    shipped = shipped_models()
    path = shipped[model] if model in shipped else Path(model).expanduser()
    kwargs = {k: v for k, v in (("torch_dtype", dtype), ("variant", variant)) if v is not None}
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise StablenoiseError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise StablenoiseError(f"{index} is not a valid model_index.json") from None
        # A pipeline class diffusers does not know (a registered family's own) loads through that class.
        loader = next((f.pipeline for f in families() if f.pipeline.__name__ == class_name), DiffusionPipeline)
        pipe = from_pretrained(loader, str(path), f"model {model!r}", **kwargs)
    elif path.exists() or _looks_like_path(model):
        raise StablenoiseError(f"model path not found: {model}")
    else:
        pipe = from_pretrained(DiffusionPipeline, model, f"model {model!r}", **kwargs)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    backend = from_pipeline(pipe, name=model, height=height, width=width, timestep_spacing=timestep_spacing,
                            inversion_point=inversion_point)
    return backend.compile() if compile else backend


__all__ = ["Backend", "Conditioning", "Defaults", "Denoiser", "DiffusersBackend", "Family", "FlowBackend", "FluxBackend",
           "ShapEBackend", "StableDiffusion3Backend", "StableDiffusionBackend",
           "StableDiffusionXLBackend", "families", "from_pipeline", "load", "register_family", "shipped_models",
           "uses_cfg"]
