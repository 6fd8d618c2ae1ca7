"""Tiny random-weight SD and SDXL pipelines built from configs, as diffusers' own tests do: no downloads."""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from stablenoise.shapes.pipeline import build_tokenizer

WORDS = ["a", "red", "cube", "on", "blue", "sphere", "photo", "of", "cat", "dog"]


def _text_config(tok, hidden=32, projection=32):
    n = len(tok)
    return CLIPTextConfig(vocab_size=n, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=tok.model_max_length,
                          projection_dim=projection, bos_token_id=n - 2, eos_token_id=n - 1,
                          pad_token_id=n - 1, hidden_act="gelu")


def _vae():
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=8, sample_size=32)


def _unet(cross_attention_dim, **extra):
    return UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
                                attention_head_dim=8, cross_attention_dim=cross_attention_dim, **extra).eval()


def _sd_scheduler():
    # SD 1.5's own scheduler settings (its PNDM config, as DDIM).
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1)


def tiny_sd(seed: int = 0) -> StableDiffusionPipeline:
    torch.manual_seed(seed)
    tok = build_tokenizer(WORDS)
    unet = _unet(32)
    return StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok)), tokenizer=tok,
                                   unet=unet, scheduler=_sd_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def tiny_sdxl(seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    tok = build_tokenizer(WORDS)
    unet = _unet(64, addition_embed_type="text_time", addition_time_embed_dim=8,
                 projection_class_embeddings_input_dim=6 * 8 + 32)  # 6 size ids x 8 + pooled 32
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok)),
                                     text_encoder_2=CLIPTextModelWithProjection(_text_config(tok)),
                                     tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=sched)
