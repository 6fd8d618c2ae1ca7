"""Build a backend from a model id, a local folder, or a pipeline the user already has.

Which adapter wraps a pipeline is decided by its class, once, here; the algorithms never ask.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import StablenoiseError
from ..loading import from_pretrained
from .base import Backend, Conditioning, Defaults, DiffusersBackend, uses_cfg
from .sd import StableDiffusionBackend
from .sdxl import StableDiffusionXLBackend
from .shapes import ShapesBackend

SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "weights" / "shapes"
DEFAULT_MODEL = "shapes"  # the name that means the shipped model

# Turbo models are distilled for 1-4 steps without classifier-free guidance; the others take the
# guidance their model cards use. Steps are diffusers' pipeline defaults.
FAMILY_DEFAULTS = {
    "shapes": Defaults(steps=10, guidance=2.0),
    "sd": Defaults(steps=50, guidance=7.5),
    "sd-turbo": Defaults(steps=4, guidance=0.0),
    "sdxl": Defaults(steps=50, guidance=5.0),
    "sdxl-turbo": Defaults(steps=4, guidance=0.0),
}


def _registry():
    from transformers.utils import logging as hf_logging

    # The SD pipelines import CLIPImageProcessor, which warns that torchvision (not a dependency:
    # its PyPI wheels do not import beside CPU torch) is missing. We never use the image processor.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    finally:
        hf_logging.set_verbosity(verbosity)

    from ..shapes.pipeline import ShapesPipeline

    # Most specific first.
    return [(ShapesPipeline, ShapesBackend, "shapes"),
            (StableDiffusionXLPipeline, StableDiffusionXLBackend, "sdxl"),
            (StableDiffusionPipeline, StableDiffusionBackend, "sd")]


def from_pipeline(pipe, name: str | None = None, height: int | None = None, width: int | None = None,
                  timestep_spacing: str | None = None) -> DiffusersBackend:
    """Wrap a loaded diffusers pipeline. The DDIM round trip takes the pipeline scheduler's config
    (see :func:`stablenoise.ddim.settings`); ``timestep_spacing`` overrides its spacing
    ("leading", "trailing" or "linspace")."""
    scheduler_overrides = {"timestep_spacing": timestep_spacing} if timestep_spacing else {}
    name = name or str(getattr(pipe, "name_or_path", "") or getattr(pipe.config, "_name_or_path", "") or "")
    for cls, backend_cls, family in _registry():
        if isinstance(pipe, cls):
            if "turbo" in name.lower() and family in ("sd", "sdxl"):
                family += "-turbo"
            kwargs = {} if backend_cls is ShapesBackend else {"height": height, "width": width}
            if backend_cls is ShapesBackend and (height or width):
                raise StablenoiseError("the shapes model has a fixed 32x32 resolution")
            return backend_cls(pipe=pipe, name=name or family, defaults=FAMILY_DEFAULTS[family],
                               scheduler_overrides=scheduler_overrides, **kwargs)
    supported = ", ".join(c.__name__ for c, _, _ in _registry())
    raise StablenoiseError(f"unsupported pipeline class {type(pipe).__name__}; supported: {supported}")


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
         variant: str | None = None, timestep_spacing: str | None = None) -> DiffusersBackend:
    """Load a backend from a hub id (``stabilityai/sdxl-turbo``) or a local pipeline folder.

    ``None`` or ``"shapes"`` is the shapes-world model shipped inside the package (no network).
    ``variant`` picks weight files as in diffusers (``"fp16"``); ``height``/``width`` set the image size
    of SD/SDXL (default: the UNet's native size).
    """
    from diffusers import DiffusionPipeline

    from ..shapes.pipeline import ShapesPipeline

    dtype = parse_dtype(dtype)
    device = parse_device(device)
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals make small UNets ~18x slower on CPU
    model = str(model) if model is not None else DEFAULT_MODEL
    path = SHIPPED_MODEL if model == DEFAULT_MODEL else Path(model).expanduser()
    kwargs = {k: v for k, v in (("torch_dtype", dtype), ("variant", variant)) if v is not None}
    if path.is_dir():
        index = path / "model_index.json"
        if not index.is_file():
            raise StablenoiseError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        try:
            class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise StablenoiseError(f"{index} is not a valid model_index.json") from None
        loader = ShapesPipeline if class_name == "ShapesPipeline" else DiffusionPipeline
        pipe = from_pretrained(loader, str(path), f"model {model!r}", **kwargs)
    elif path.exists() or _looks_like_path(model):
        raise StablenoiseError(f"model path not found: {model}")
    else:
        pipe = from_pretrained(DiffusionPipeline, model, f"model {model!r}", **kwargs)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return from_pipeline(pipe, name=model, height=height, width=width, timestep_spacing=timestep_spacing)


__all__ = ["Backend", "Conditioning", "Defaults", "DiffusersBackend", "StableDiffusionBackend",
           "StableDiffusionXLBackend", "ShapesBackend", "from_pipeline", "load", "uses_cfg",
           "SHIPPED_MODEL", "FAMILY_DEFAULTS"]
