"""Image preprocessing of the reward models, each as its original does it, in two forms: on PIL
images (bit-faithful to the original processor) and on [B, 3, H, W] tensors in [0, 1] (differentiable).

- ``crop``: CLIP's resize of the shortest side to ``size`` (bicubic; the long side truncated to an
  int) and a centre crop. transformers' CLIPImageProcessor puts the crop at ``(H - size) // 2``;
  torchvision (OpenAI's ``clip`` package, BLIP) at ``round((H - size) / 2)``: they differ on odd margins.
- ``pad``: HPSv2's evaluation transform (open_clip ``ResizeMaxSize``): resize the longest side to
  ``size`` and pad the short side with zeros (black, before normalization), split as ``pad // 2`` first.
  The original applies it to the tensor (after ToTensor), so the tensor form is the original.

The tensor form of ``crop`` resizes with torch's antialiased bicubic, which is PIL's filter (a = -0.5),
clamped to [0, 1]; PIL also rounds to 8 bits and clamps between its horizontal and vertical passes,
so the two forms differ slightly (on the test images by 0.3/255 per pixel on average, more at sharp edges).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from .base import to_tensor

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def short_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def crop_offset(length: int, size: int, rounding: str) -> int:
    return (length - size) // 2 if rounding == "floor" else int(round((length - size) / 2.0))


def crop_pil(image: Image.Image, size: int, rounding: str) -> torch.Tensor:
    h, w = short_side_size(image.height, image.width, size)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.BICUBIC)
    top, left = crop_offset(h, size, rounding), crop_offset(w, size, rounding)
    return to_tensor(image)[:, top:top + size, left:left + size]


def crop_tensor(pixels: torch.Tensor, size: int, rounding: str) -> torch.Tensor:
    h, w = short_side_size(pixels.shape[-2], pixels.shape[-1], size)
    if (h, w) != tuple(pixels.shape[-2:]):
        # PIL's 8-bit output cannot overshoot [0, 1]; clamp as it does.
        pixels = F.interpolate(pixels, size=(h, w), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = crop_offset(h, size, rounding), crop_offset(w, size, rounding)
    return pixels[..., top:top + size, left:left + size]


def pad_tensor(pixels: torch.Tensor, size: int) -> torch.Tensor:
    height, width = pixels.shape[-2:]
    scale = size / float(max(height, width))
    h, w = round(height * scale), round(width * scale)  # Python's round, as the original
    if scale != 1.0:
        pixels = F.interpolate(pixels, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    # The original skips the padding too when the long side is already `size`, and then fails on a
    # non-square image; padding it is what it means.
    ph, pw = size - h, size - w
    return F.pad(pixels, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=0.0)


def pad_pil(image: Image.Image, size: int) -> torch.Tensor:
    return pad_tensor(to_tensor(image)[None], size)[0]


def normalize(pixels: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    return (pixels - m) / s


class Preprocess:
    """One model's preprocessing: ``kind`` "crop" (with its rounding) or "pad", then mean/std."""

    def __init__(self, size: int, kind: str = "crop", rounding: str = "floor", mean=CLIP_MEAN, std=CLIP_STD):
        self.size, self.kind, self.rounding, self.mean, self.std = size, kind, rounding, mean, std

    def pil(self, images: list[Image.Image]) -> torch.Tensor:
        if self.kind == "pad":
            x = torch.stack([pad_pil(im, self.size) for im in images])
        else:
            x = torch.stack([crop_pil(im, self.size, self.rounding) for im in images])
        return normalize(x, self.mean, self.std)

    def tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.kind == "pad":
            x = pad_tensor(pixels, self.size)
        else:
            x = crop_tensor(pixels, self.size, self.rounding)
        return normalize(x, self.mean, self.std)
