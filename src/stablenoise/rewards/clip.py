"""Rewards computed from a transformers ``CLIPModel``: CLIPScore, PickScore, HPSv2 and the LAION
aesthetic predictor. They differ in weights, preprocessing and the head on the two embeddings."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .base import Reward
from .preprocess import Preprocess


def _features(out) -> torch.Tensor:
    # transformers 5 returns a model output whose pooler_output is projected; 4.x returns the tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipReward(Reward):
    """``head(image_embeds, text_embeds)`` on L2-normalized CLIP embeddings (text is None without prompts)."""

    differentiable = True

    def __init__(self, name: str, model, tokenizer, preprocess: Preprocess, head: Callable,
                 needs_prompts: bool = True, max_length: int | None = None):
        self.name, self.model, self.tokenizer, self.preprocess, self.head = name, model, tokenizer, preprocess, head
        self.needs_prompts = needs_prompts
        self.max_length = max_length or model.config.text_config.max_position_embeddings
        self.model.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = pixel_values.to(self.device, self.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=x)).float(), dim=-1)

    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                           attention_mask=tok["attention_mask"].to(self.device))
        return F.normalize(_features(out).float(), dim=-1)

    def _score(self, pixel_values: torch.Tensor, prompts) -> torch.Tensor:
        image = self.image_embeds(pixel_values)
        text = self.text_embeds(prompts) if self.needs_prompts else None
        return self.head(image, text).float().reshape(-1)

    def score_pil(self, images, prompts):
        return self._score(self.preprocess.pil(images), prompts)

    def score_tensor(self, pixels, prompts):
        return self._score(self.preprocess.tensor(pixels.float()), prompts)


def cosine(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return (image * text).sum(-1)


def clipscore_head(image, text):
    """torchmetrics' CLIPScore: 100 * max(cos, 0)."""
    return 100 * cosine(image, text).clamp(min=0)


def hps_head(image, text):
    """HPSv2's score is the cosine (no logit scale); its paper reports it x100."""
    return 100 * cosine(image, text)


def pickscore_head(logit_scale: torch.Tensor):
    def head(image, text):
        return logit_scale.detach().float().exp() * cosine(image, text)
    return head


class AestheticHead(torch.nn.Module):
    """The LAION improved-aesthetic-predictor MLP (``simple_inference.py``): five linear layers with
    no activation between them (dropouts are inactive at inference), on the normalized CLIP image
    embedding. State-dict keys ``layers.{0,2,4,6,7}.{weight,bias}``."""

    LINEAR = (0, 2, 4, 6, 7)

    def __init__(self, state: dict):
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for i in self.LINEAR:
            w = state[f"layers.{i}.weight"]
            lin = torch.nn.Linear(w.shape[1], w.shape[0])
            lin.load_state_dict({"weight": w.float(), "bias": state[f"layers.{i}.bias"].float()})
            self.layers.append(lin)
        self.requires_grad_(False)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, image, text=None):
        x = image.to(self.layers[0].weight.dtype)
        for lin in self.layers:
            x = lin(x)
        return x.squeeze(-1)
