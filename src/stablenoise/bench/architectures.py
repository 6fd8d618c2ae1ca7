"""Full-size SD 1.5 and SDXL pipelines with random weights, built from their published configs: the same
FLOPs and memory as the real models, for ``stablenoise perf --architecture`` on a machine without hub access.

The configs are those of runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-xl-base-1.0 (unet,
vae, text encoders, scheduler); ``tests/bench/test_architectures.py`` checks the parameter counts against the
real models'. The tokenizer is character-level: SD pipelines pad every prompt to 77 tokens, so the cost does not
depend on it.
"""

from __future__ import annotations

import torch

from ..errors import StablenoiseError

ARCHITECTURES = ("sd15", "sdxl")
NATIVE_SIZE = {"sd15": 512, "sdxl": 1024}
VOCAB = 49408  # CLIP's vocabulary: the embedding tables have the real size

SD15_UNET = dict(sample_size=64, cross_attention_dim=768)  # the rest are diffusers' defaults, which are SD 1.x's
SDXL_UNET = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                 attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
                 use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
                 projection_class_embeddings_input_dim=2816)
VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
CLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                 projection_dim=1280, hidden_act="gelu")
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def char_tokenizer():
    from transformers import CLIPTokenizer

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,'-!?")
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text_config(tok, **config):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=VOCAB, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, **config)


def random_pipeline(architecture: str, seed: int = 0, dtype: torch.dtype = torch.float32, device=None):
    """A StableDiffusionPipeline (sd15) or StableDiffusionXLPipeline (sdxl) of the real size, random weights."""
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if architecture not in ARCHITECTURES:
        raise StablenoiseError(f"unknown architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}")
    torch.manual_seed(seed)
    tok = char_tokenizer()
    with torch.device(device or "cpu"):  # weights made where they run (the meta device: shapes only)
        if architecture == "sd15":
            models = dict(vae=AutoencoderKL(sample_size=512, scaling_factor=0.18215, **VAE),
                          text_encoder=CLIPTextModel(_text_config(tok, **CLIP_L)),
                          unet=UNet2DConditionModel(**SD15_UNET))
        else:
            models = dict(vae=AutoencoderKL(sample_size=1024, scaling_factor=0.13025, force_upcast=True, **VAE),
                          text_encoder=CLIPTextModel(_text_config(tok, **CLIP_L)),
                          text_encoder_2=CLIPTextModelWithProjection(_text_config(tok, **CLIP_BIGG)),
                          unet=UNet2DConditionModel(**SDXL_UNET))
    if architecture == "sd15":
        pipe = StableDiffusionPipeline(tokenizer=tok, scheduler=DDIMScheduler(clip_sample=False, set_alpha_to_one=False,
                                                                              **SCHEDULER),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                       **models)
    else:
        pipe = StableDiffusionXLPipeline(tokenizer=tok, tokenizer_2=tok, **models,
                                         scheduler=EulerDiscreteScheduler(timestep_spacing="leading", **SCHEDULER))
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
