"""open_clip ViT checkpoints (as HPSv2 ships them) as a transformers ``CLIPModel``.

The widths, depths, patch size, context length and vocabulary are read from the tensors; the head
counts are not stored in a state dict and come from the open_clip model config (``ViT-H-14`` unless
an ``open_clip_config.json``, the file open_clip publishes next to its hub weights, says otherwise).
Both towers compute the same functions in both libraries: pre-LN blocks, fused q/k/v projections split
in order, GELU (or QuickGELU when the config says so), class-token pooling after ``ln_post``, text
pooling at the end-of-text token after ``ln_final``, projections stored transposed.
"""

from __future__ import annotations

import re

import torch

from ..errors import StablenoiseError

# open_clip's model_configs/ViT-H-14.json
VIT_H_14 = {"embed_dim": 1024,
            "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}}

REQUIRED = ("visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
            "token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight")

_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}


def strip_prefix(state: dict) -> dict:
    """DDP checkpoints prefix every key with ``module.``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _layers(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
    return max(found) + 1 if found else 0


def clip_config(state: dict, model_cfg: dict = VIT_H_14):
    """A transformers ``CLIPConfig`` for this open_clip state dict."""
    from transformers import CLIPConfig

    vcfg, tcfg = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    conv = state["visual.conv1.weight"]
    v_width, patch = conv.shape[0], conv.shape[-1]
    grid = int(round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5))
    v_heads = v_width // vcfg.get("head_width", 64)
    t_width = state["token_embedding.weight"].shape[1]
    t_heads = tcfg.get("heads", 8)
    if v_heads < 1 or v_width % v_heads or t_width % t_heads:
        raise StablenoiseError(f"open_clip config does not fit the checkpoint (vision width {v_width}, "
                               f"{v_heads} heads; text width {t_width}, {t_heads} heads)")
    act = "quick_gelu" if model_cfg.get("quick_gelu") else "gelu"
    vocab = state["token_embedding.weight"].shape[0]
    v_mlp = state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]
    vision = dict(hidden_size=v_width, intermediate_size=v_mlp,
                  num_hidden_layers=_layers(state, "visual.transformer.resblocks."), num_attention_heads=v_heads,
                  image_size=grid * patch, patch_size=patch, hidden_act=act, layer_norm_eps=1e-5,
                  projection_dim=state["visual.proj"].shape[1])
    text = dict(hidden_size=t_width, intermediate_size=state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
                num_hidden_layers=_layers(state, "transformer.resblocks."), num_attention_heads=t_heads,
                max_position_embeddings=state["positional_embedding"].shape[0], vocab_size=vocab,
                hidden_act=act, layer_norm_eps=1e-5, projection_dim=state["text_projection"].shape[1],
                # open_clip pools at argmax(token id): the end-of-text token, the largest id.
                bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=state["visual.proj"].shape[1])


def _blocks(state: dict, src: str, dst: str, out: dict) -> None:
    for i in range(_layers(state, src)):
        s, d = f"{src}{i}.", f"{dst}{i}."
        for name in ("weight", "bias"):
            q, k, v = state[s + f"attn.in_proj_{name}"].chunk(3, dim=0)
            out[d + f"self_attn.q_proj.{name}"] = q
            out[d + f"self_attn.k_proj.{name}"] = k
            out[d + f"self_attn.v_proj.{name}"] = v
            for a, b in _BLOCK.items():
                out[d + f"{b}.{name}"] = state[s + f"{a}.{name}"]


def convert_state_dict(state: dict) -> dict:
    """open_clip key names -> transformers ``CLIPModel`` key names (tensors shared, not copied)."""
    out = {
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "logit_scale": state["logit_scale"].reshape(()) if "logit_scale" in state else torch.tensor(4.6052),
    }
    _blocks(state, "visual.transformer.resblocks.", "vision_model.encoder.layers.", out)
    _blocks(state, "transformer.resblocks.", "text_model.encoder.layers.", out)
    return out


def clip_model(state: dict, model_cfg: dict = VIT_H_14, source: str = "checkpoint"):
    """A transformers ``CLIPModel`` holding the weights of an open_clip ViT state dict."""
    from transformers import CLIPModel

    state = strip_prefix(state)
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise StablenoiseError(f"{source}: not an open_clip ViT checkpoint (missing {missing[0]!r})")
    if "visual.attnpool.c_proj.weight" in state or "visual.trunk.cls_token" in state:
        raise StablenoiseError(f"{source}: not an open_clip ViT checkpoint (ResNet or timm vision tower)")
    config = clip_config(state, model_cfg)
    model = CLIPModel(config)
    converted = {k: v.float() for k, v in convert_state_dict(state).items()}
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise StablenoiseError(f"{source}: open_clip checkpoint does not map onto CLIP "
                               f"(missing {missing[:2]}, unexpected {result.unexpected_keys[:2]})")
    return model.eval()
