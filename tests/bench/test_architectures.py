"""The random full-size architectures have exactly the real models' parameter counts (built on the meta device:
no memory, no download)."""

import pytest
import torch

from stablenoise.bench import architectures as arch
from stablenoise.errors import StablenoiseError


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_equal_the_real_models():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tok = arch.char_tokenizer()
    with torch.device("meta"):
        assert _count(UNet2DConditionModel(**arch.SD15_UNET)) == 859_520_964  # runwayml/stable-diffusion-v1-5
        assert _count(UNet2DConditionModel(**arch.SDXL_UNET)) == 2_567_463_684  # stable-diffusion-xl-base-1.0
        assert _count(AutoencoderKL(**arch.VAE)) == 83_653_863
        assert _count(CLIPTextModel(arch._text_config(tok, **arch.CLIP_L))) == 123_060_480  # CLIP ViT-L/14 text
        assert _count(CLIPTextModelWithProjection(arch._text_config(tok, **arch.CLIP_BIGG))) == 694_659_840  # bigG


def test_pipelines_assemble_on_the_meta_device():
    sd = arch.random_pipeline("sd15", device="meta")
    xl = arch.random_pipeline("sdxl", device="meta")
    assert type(sd).__name__ == "StableDiffusionPipeline" and type(xl).__name__ == "StableDiffusionXLPipeline"
    assert xl.unet.config.cross_attention_dim == 2048 and xl.vae.config.scaling_factor == 0.13025
    assert sd.tokenizer("a red cube", padding="max_length").input_ids.__len__() == 77
    with pytest.raises(StablenoiseError, match="unknown architecture"):
        arch.random_pipeline("sd3")
