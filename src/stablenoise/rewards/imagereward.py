"""ImageReward (Xu et al. 2023) on transformers' BLIP: ``ImageReward.pt`` + ``med_config.json``.

The original is BLIP's ViT-L (timm-style keys ``blip.visual_encoder.*``) feeding, by cross-attention,
BLIP's BERT (``blip.text_encoder.*``, BLIP's ``med.py``, whose key names transformers' ``BlipTextModel``
keeps); the [CLS] output of the text goes through a five-layer linear MLP (``mlp.layers.*``), and the
result is standardized with the published mean and std. Prompts are tokenized with BERT (uncased) to
35 tokens, padded to that length; images take the OpenAI-CLIP transform (torchvision: centre crop at
``round``). Heads of the ViT are not stored in the checkpoint: 64-dim heads, as in BLIP's ViT-B and ViT-L.
"""

from __future__ import annotations

import json
import re

import torch

from ..errors import StablenoiseError
from .base import Reward
from .clip import AestheticHead
from .preprocess import Preprocess

MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py: self.mean, self.std
MAX_LENGTH = 35
VISION = "blip.visual_encoder."
TEXT = "blip.text_encoder."
REQUIRED = (VISION + "cls_token", VISION + "pos_embed", VISION + "patch_embed.proj.weight",
            TEXT + "embeddings.word_embeddings.weight", "mlp.layers.0.weight")


def _depth(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return max((int(m.group(1)) + 1 for k in state for m in [pattern.match(k)] if m), default=0)


def vision_model(state: dict):
    from transformers import BlipVisionConfig
    from transformers.models.blip.modeling_blip import BlipVisionModel

    width = state[VISION + "cls_token"].shape[-1]
    patch = state[VISION + "patch_embed.proj.weight"].shape[-1]
    grid = int(round((state[VISION + "pos_embed"].shape[1] - 1) ** 0.5))
    depth = _depth(state, VISION + "blocks.")
    config = BlipVisionConfig(hidden_size=width, intermediate_size=state[VISION + "blocks.0.mlp.fc1.weight"].shape[0],
                              num_hidden_layers=depth, num_attention_heads=max(1, width // 64),
                              image_size=grid * patch, patch_size=patch, hidden_act="gelu",
                              layer_norm_eps=1e-6)  # BLIP's ViT: LayerNorm(eps=1e-6)
    out = {"embeddings.class_embedding": state[VISION + "cls_token"],
           "embeddings.position_embedding": state[VISION + "pos_embed"],
           "embeddings.patch_embedding.weight": state[VISION + "patch_embed.proj.weight"],
           "embeddings.patch_embedding.bias": state[VISION + "patch_embed.proj.bias"],
           "post_layernorm.weight": state[VISION + "norm.weight"], "post_layernorm.bias": state[VISION + "norm.bias"]}
    names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
             "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for i in range(depth):
        for a, b in names.items():
            for p in ("weight", "bias"):
                out[f"encoder.layers.{i}.{b}.{p}"] = state[f"{VISION}blocks.{i}.{a}.{p}"]
    return _load(BlipVisionModel(config), out, "BLIP vision")


def text_model(state: dict, med: dict, vision_width: int):
    from transformers import BlipTextConfig
    from transformers.models.blip.modeling_blip_text import BlipTextModel

    config = BlipTextConfig(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
                            num_attention_heads=med["num_attention_heads"],
                            max_position_embeddings=med["max_position_embeddings"],
                            layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"),
                            encoder_hidden_size=vision_width, pad_token_id=med.get("pad_token_id", 0),
                            bos_token_id=None, eos_token_id=None, sep_token_id=None)
    text = {k[len(TEXT):]: v for k, v in state.items() if k.startswith(TEXT)}
    return _load(BlipTextModel(config, add_pooling_layer=False), text, "BLIP text")


def _load(model, state: dict, what: str):
    result = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise StablenoiseError(f"ImageReward checkpoint does not fit {what} (missing {missing[0]!r})")
    return model.eval()


class ImageReward(Reward):
    name = "imagereward"
    differentiable = True

    def __init__(self, vision, text, head: AestheticHead, tokenizer):
        self.vision, self.text, self.head, self.tokenizer = vision, text, head, tokenizer
        for m in (vision, text, head):
            m.requires_grad_(False)
        self.preprocess = Preprocess(vision.config.image_size, "crop", "round")

    def _score(self, pixel_values, prompts):
        p = next(self.vision.parameters())
        image = self.vision(pixel_values=pixel_values.to(p.device, p.dtype)).last_hidden_state
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             return_tensors="pt")
        out = self.text(input_ids=tok["input_ids"].to(p.device), attention_mask=tok["attention_mask"].to(p.device),
                        encoder_hidden_states=image,
                        encoder_attention_mask=torch.ones(image.shape[:-1], dtype=torch.long, device=p.device))
        reward = self.head(out.last_hidden_state[:, 0].float())
        return (reward - MEAN) / STD

    def score_pil(self, images, prompts):
        return self._score(self.preprocess.pil(images), prompts)

    def score_tensor(self, pixels, prompts):
        return self._score(self.preprocess.tensor(pixels.float()), prompts)


def read_checkpoint(path) -> dict:
    from .weights import read_state_dict

    state = read_state_dict(path)
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise StablenoiseError(f"{path}: not an ImageReward checkpoint (missing {missing[0]!r})")
    return state


def build(path, state: dict, med_config: dict, tokenizer, device, dtype) -> ImageReward:
    vision = vision_model(state)
    text = text_model(state, med_config, vision.config.hidden_size)
    head = AestheticHead({k[len("mlp."):]: v for k, v in state.items() if k.startswith("mlp.")})
    if head.in_features != text.config.hidden_size:
        raise StablenoiseError(f"{path}: ImageReward head takes {head.in_features}-d features, the text model "
                               f"gives {text.config.hidden_size}-d")
    dtype = dtype or torch.float32
    return ImageReward(vision.to(device, dtype), text.to(device, dtype), head.to(device), tokenizer)


def read_med_config(path) -> dict:
    try:
        return json.loads(open(path).read())
    except (OSError, ValueError) as e:
        raise StablenoiseError(f"{path}: not a BLIP med_config.json ({e})") from None
