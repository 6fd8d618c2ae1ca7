"""The reward interface: ``reward(images, prompts) -> tensor [B]``.

Images are PIL images or a [B, 3, H, W] float tensor in [0, 1]. PIL images go through the original
model's own preprocessing (to reproduce its published scores); a tensor goes through the same steps
written in torch, so a differentiable reward keeps gradients back to the pixels (and to a noise).
"""

from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from ..errors import StablenoiseError


class Reward:
    """Subclasses set ``name`` and the flags, and implement ``score_pil`` and ``score_tensor``."""

    name: str = "reward"
    higher_is_better: bool = True
    differentiable: bool = False
    needs_prompts: bool = True

    def __call__(self, images, prompts=None) -> torch.Tensor:
        if isinstance(images, Image.Image):
            images = [images]
        if isinstance(images, torch.Tensor):
            pixels = check_pixels(images)
            prompts = self._prompts(prompts, len(pixels))
            if self.differentiable:
                return self.score_tensor(pixels, prompts)
            with torch.no_grad():
                return self.score_tensor(pixels, prompts)
        images = list(images)
        if not images or not all(isinstance(im, Image.Image) for im in images):
            raise StablenoiseError("images must be PIL images or a [B, 3, H, W] tensor in [0, 1]")
        prompts = self._prompts(prompts, len(images))
        with torch.no_grad():
            return self.score_pil([im.convert("RGB") for im in images], prompts)

    def _prompts(self, prompts, n: int) -> list[str] | None:
        if prompts is None:
            if self.needs_prompts:
                raise StablenoiseError(f"reward {self.name!r} needs a prompt per image")
            return None
        prompts = [prompts] * n if isinstance(prompts, str) else list(prompts)
        if len(prompts) != n:
            raise StablenoiseError(f"{n} images but {len(prompts)} prompts: give one prompt per image (or one for all)")
        if not all(isinstance(p, str) for p in prompts):
            raise StablenoiseError("prompts must be strings")
        return prompts

    def score_pil(self, images: list[Image.Image], prompts: list[str] | None) -> torch.Tensor:
        """Score PIL images through the original model's own preprocessing (called without gradients).

        Args:
            images: RGB images, at least one.
            prompts: one prompt per image (None when the reward does not need prompts).

        Returns:
            A tensor [B] of scores.
        """
        raise NotImplementedError

    def score_tensor(self, pixels: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        """Score an image tensor through the same preprocessing written in torch (with gradients when
        ``differentiable``).

        Args:
            pixels: float images [B, 3, H, W] in [0, 1].
            prompts: one prompt per image (None when the reward does not need prompts).

        Returns:
            A tensor [B] of scores.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def check_pixels(pixels: torch.Tensor) -> torch.Tensor:
    if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
        raise StablenoiseError(f"image tensor must be float [B, 3, H, W] in [0, 1], got {tuple(pixels.shape)} "
                               f"{pixels.dtype}")
    if len(pixels) == 0:
        raise StablenoiseError("no images")
    return pixels


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> float [3, H, W] in [0, 1], as torchvision's ToTensor (uint8 / 255)."""
    data = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return data.view(image.height, image.width, 3).permute(2, 0, 1).float().div(255)


def as_list(scores: Sequence[float]) -> list[float]:
    return [float(s) for s in scores]
