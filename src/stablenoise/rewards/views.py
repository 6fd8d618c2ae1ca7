"""A reward of a 3D asset from its turntable: an image reward averaged over the views of a strip.

A turntable strip is square views side by side (what ``ShapEBackend.decode`` returns), so a strip H pixels
tall and n H wide holds n views. Each view is scored against the prompt on its own; the strip's score is
their mean.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..errors import StablenoiseError
from .base import Reward


def view_count(width: int, height: int) -> int:
    if height < 1 or width % height:
        raise StablenoiseError(f"a turntable strip is square views side by side; a {width}x{height} image is not")
    return width // height


def split_strip(image: Image.Image) -> list[Image.Image]:
    h = image.height
    return [image.crop((i * h, 0, (i + 1) * h, h)) for i in range(view_count(image.width, h))]


class ViewsReward(Reward):
    """``inner``'s mean over the views of each strip."""

    def __init__(self, name: str, inner: Reward):
        self.name, self.inner = name, inner
        self.differentiable, self.needs_prompts = inner.differentiable, inner.needs_prompts
        self.higher_is_better = inner.higher_is_better

    def _mean(self, scores: torch.Tensor, counts: list[int]) -> torch.Tensor:
        return torch.stack([part.mean() for part in scores.split(counts)])

    def _each_view(self, prompts, counts):
        return None if prompts is None else [p for p, n in zip(prompts, counts) for _ in range(n)]

    def score_pil(self, images, prompts):
        views = [split_strip(im) for im in images]
        counts = [len(v) for v in views]
        return self._mean(self.inner.score_pil([v for vs in views for v in vs], self._each_view(prompts, counts)),
                          counts)

    def score_tensor(self, pixels, prompts):
        b, c, h, w = pixels.shape
        n = view_count(w, h)
        views = pixels.unflatten(3, (n, h)).permute(0, 3, 1, 2, 4).reshape(b * n, c, h, h)
        return self._mean(self.inner.score_tensor(views, self._each_view(prompts, [n] * b)), [n] * b)
