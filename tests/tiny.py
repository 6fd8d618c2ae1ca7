"""Tiny random-weight SD, SDXL, SD3 and FLUX pipelines built from configs, as diffusers' own tests do: no
downloads. One locally built CLIP tokenizer stands in for every tokenizer, T5's included."""

from __future__ import annotations

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler,
                       FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

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


def _t5(tok, d_model):
    n = len(tok)
    return T5EncoderModel(T5Config(vocab_size=n, d_model=d_model, d_ff=37, d_kv=8, num_layers=1, num_heads=4,
                                   relative_attention_num_buckets=8, pad_token_id=n - 1, eos_token_id=n - 1,
                                   decoder_start_token_id=0)).eval()


def _flow_vae(shift_factor, scaling_factor):
    # SD3/FLUX VAEs: no quant convs, and a shift factor (non-zero here so decoding without it is caught).
    return AutoencoderKL(block_out_channels=(16, 32), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=4, norm_num_groups=8, sample_size=32, shift_factor=shift_factor,
                         scaling_factor=scaling_factor, use_quant_conv=False, use_post_quant_conv=False)


def tiny_sd3(seed: int = 0, **scheduler) -> StableDiffusion3Pipeline:
    """SD3.5's layout: two CLIPs with projections (pooled 32 + 32) and T5 (64 wide), a patch-2 MMDiT."""
    torch.manual_seed(seed)
    tok = build_tokenizer(WORDS)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=4, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64,
                                        pos_embed_max_size=16).eval()
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**{"shift": 3.0, **scheduler}),
        vae=_flow_vae(0.0609, 1.5035), text_encoder=CLIPTextModelWithProjection(_text_config(tok)),
        tokenizer=tok, text_encoder_2=CLIPTextModelWithProjection(_text_config(tok)), tokenizer_2=tok,
        text_encoder_3=_t5(tok, 64), tokenizer_3=tok)


def tiny_flux(seed: int = 0, guidance_embeds: bool = False, **scheduler) -> FluxPipeline:
    """FLUX.1's layout: CLIP (pooled 32) and T5 (32 wide), a transformer over packed 2x2 patches of a
    4-channel latent. ``guidance_embeds`` makes it dev-like, with dev's dynamic shifting."""
    torch.manual_seed(seed)
    tok = build_tokenizer(WORDS)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6)).eval()
    dev = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
           "max_image_seq_len": 4096}
    sched = FlowMatchEulerDiscreteScheduler(**{**(dev if guidance_embeds else {"shift": 1.0}), **scheduler})
    return FluxPipeline(scheduler=sched, vae=_flow_vae(0.1159, 0.3611),
                        text_encoder=CLIPTextModel(_text_config(tok)), tokenizer=tok,
                        text_encoder_2=_t5(tok, 32), tokenizer_2=tok, transformer=transformer)
