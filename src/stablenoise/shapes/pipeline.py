"""The shapes-world text-to-image model as a diffusers pipeline.

A small pixel-space ``UNet2DConditionModel`` conditioned by a small ``CLIPTextModel`` through
cross-attention, with a ``DDIMScheduler``: the same components as Stable Diffusion, minus the VAE
(the "latent" is the 3x32x32 image in [-1, 1]). stablenoise's backends drive it through the same
code path as SD and SDXL.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

MAX_TOKENS = 16  # the longest caption ("a yellow triangle right of a white square") is 12 tokens


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """Pixel-space samples in [-1, 1], [B, 3, H, W], as 8-bit PIL images."""
    x = (pixels.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    return [Image.fromarray(a) for a in (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)]


def build_tokenizer(words: list[str]) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose vocabulary holds every character and every given word whole.

    Built locally (no download): each word gets a chain of left-to-right merges, longer words
    first so that a short word's merges do not split a longer one. Unknown words still tokenize,
    letter by letter.
    """
    specials = ["<|startoftext|>", "<|endoftext|>"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,'-!?")
    vocab_tokens = list(chars) + [c + "</w>" for c in chars]
    merges = []
    for word in sorted(words, key=lambda w: (-len(w), w)):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        acc = pieces[0]
        for nxt in pieces[1:]:
            merges.append((acc, nxt))
            acc = acc + nxt
            vocab_tokens.append(acc)
    vocab = {}
    for tok in vocab_tokens + specials:
        vocab.setdefault(tok, len(vocab))
    merges = list(dict.fromkeys(merges))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TOKENS)


def text_encoder_config(vocab_size: int, **overrides) -> CLIPTextConfig:
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, max_position_embeddings=MAX_TOKENS, projection_dim=64,
               bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    cfg.update(overrides)
    return CLIPTextConfig(**cfg)


def unet_config(resolution: int = 32, cross_attention_dim: int = 64, **overrides) -> dict:
    # Attention only at 8x8 (the two outer levels are plain ResNet blocks): cheap on a CPU.
    cfg = dict(sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=1,
               block_out_channels=(32, 64, 96), norm_num_groups=16,
               down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
               cross_attention_dim=cross_attention_dim, attention_head_dim=16)
    cfg.update(overrides)
    return cfg


SCHEDULES = ("scaled_linear", "cosine")


def scheduler_config(schedule: str = "scaled_linear") -> dict:
    """The noise schedule the model is trained on, as a DDIMScheduler config.

    ``scaled_linear`` (the shipped model): SD/SDXL's betas with "trailing" spacing, so every step count
    starts at t = 999 from pure noise, as SDXL-turbo does (alpha_bar(999) ~ 0.005, the same signal
    level SD's latents keep there).

    ``cosine`` (the first shipped model, kept as ``shapes-cosine``): cosine betas reach
    alpha_bar(999) ~ 2e-9, so a DDIM step *at* t = 999 divides the noise prediction's error by ~5e-5;
    it needs "leading" spacing, which starts 10 steps at t = 901 (alpha_bar 0.024) and 5 steps at
    t = 801 (0.09): Gaussian noise is then fed in as a partly denoised sample.
    """
    if schedule == "scaled_linear":
        return dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    clip_sample=False, prediction_type="epsilon", timestep_spacing="trailing", steps_offset=0,
                    set_alpha_to_one=False)
    if schedule == "cosine":
        return dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", clip_sample=False,
                    prediction_type="epsilon", timestep_spacing="leading", steps_offset=1, set_alpha_to_one=True)
    raise ValueError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")


class ShapesPipeline(DiffusionPipeline):
    """Pixel-space text-to-image pipeline: ``pipe(prompt, latents=..., num_inference_steps=..., guidance_scale=...)``."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer, scheduler: DDIMScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)

    @classmethod
    def from_scratch(cls, words: list[str], resolution: int = 32, seed: int = 0,
                     schedule: str = "scaled_linear") -> "ShapesPipeline":
        torch.manual_seed(seed)
        tok = build_tokenizer(words)
        te = CLIPTextModel(text_encoder_config(len(tok)))
        unet = UNet2DConditionModel(**unet_config(resolution, te.config.hidden_size))
        return cls(unet, te, tok, DDIMScheduler(**scheduler_config(schedule)))

    def encode_prompt(self, prompt: list[str], device=None) -> torch.Tensor:
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(device or self.device))[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 20,
                 guidance_scale: float = 2.0, latents: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, num_images_per_prompt: int = 1,
                 output_type: str = "pil", return_dict: bool = True):
        cond, latents = self._prepare(prompt, num_images_per_prompt, guidance_scale, latents, generator)
        x = latents.to(self.device, self.unet.dtype) * self.scheduler.init_noise_sigma
        cfg = guidance_scale > 1
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = torch.cat([x, x]) if cfg else x
            eps = self.unet(self.scheduler.scale_model_input(inp, t), t, encoder_hidden_states=cond).sample
            if cfg:
                u, c = eps.chunk(2)
                eps = u + guidance_scale * (c - u)
            x = self.scheduler.step(eps, t, x).prev_sample
        return self._output(x, output_type, return_dict)

    def _prepare(self, prompt, num_images_per_prompt, guidance_scale, latents, generator):
        """(text conditioning, unconditional first under CFG; the float32 starting noise)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        c = self.unet.config
        if latents is None:
            latents = torch.randn((len(prompts), c.in_channels, c.sample_size, c.sample_size),
                                  generator=generator, dtype=torch.float32)
        cond = self.encode_prompt(prompts)
        if guidance_scale > 1:
            cond = torch.cat([self.encode_prompt([""] * len(prompts)), cond])
        return cond, latents

    @staticmethod
    def _output(x, output_type, return_dict):
        if output_type == "pt":
            out = (x / 2 + 0.5).clamp(0, 1)
        else:
            out = to_pil(x)
            out = np.stack([np.asarray(im) for im in out]) if output_type == "np" else out
        return ImagePipelineOutput(images=out) if return_dict else (out,)
