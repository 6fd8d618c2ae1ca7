"""The shapes world with a flow-matching objective (``--model shapes-flow``).

The same pixel-space UNet and CLIP text encoder as :class:`ShapesPipeline` (they train in the CPU budget),
trained to predict the velocity eps - x0 of x_sigma = (1 - sigma) x0 + sigma eps, as SD3 and FLUX are,
and sampled with ``FlowMatchEulerDiscreteScheduler``. The UNet's timestep is sigma * 1000, the
scheduler's own timestep, as SD3's transformer takes it.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from transformers import CLIPTextModel, CLIPTokenizer

from .pipeline import build_tokenizer, text_encoder_config, to_pil, unet_config


def scheduler_config() -> dict:
    # No shift: a 32x32 image has 1024 pixels, SD3's shift 3 is for 128x128 latents (dynamic shifting
    # would give mu ~ 0.5 here, i.e. a shift of ~1.6; 1.0 keeps the sigmas uniform and the model simple).
    return dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


class ShapesFlowPipeline(DiffusionPipeline):
    """Pixel-space flow-matching text-to-image: ``pipe(prompt, latents=..., num_inference_steps=..., guidance_scale=...)``."""

    model_cpu_offload_seq = "text_encoder->unet"

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @classmethod
    def from_scratch(cls, words: list[str], resolution: int = 32, seed: int = 0, **unet_overrides
                     ) -> "ShapesFlowPipeline":
        torch.manual_seed(seed)
        tok = build_tokenizer(words)
        te = CLIPTextModel(text_encoder_config(len(tok)))
        unet = UNet2DConditionModel(**unet_config(resolution, te.config.hidden_size, **unet_overrides))
        return cls(unet, te, tok, FlowMatchEulerDiscreteScheduler(**scheduler_config()))

    def encode_prompt(self, prompt: list[str], device=None) -> torch.Tensor:
        ids = self.tokenizer(prompt, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(device or self.device))[0]

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 20, guidance_scale: float = 2.0,
                 latents: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 num_images_per_prompt: int = 1, output_type: str = "pil", return_dict: bool = True):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        c = self.unet.config
        if latents is None:
            latents = torch.randn((len(prompts), c.in_channels, c.sample_size, c.sample_size),
                                  generator=generator, dtype=torch.float32)
        x = latents.to(self.device, torch.float32)
        cfg = guidance_scale > 1
        cond = self.encode_prompt(prompts)
        if cfg:
            cond = torch.cat([self.encode_prompt([""] * len(prompts)), cond])
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = (torch.cat([x, x]) if cfg else x).to(self.unet.dtype)
            v = self.unet(inp, t.expand(inp.shape[0]), encoder_hidden_states=cond).sample
            if cfg:
                u, cv = v.chunk(2)
                v = u + guidance_scale * (cv - u)
            x = self.scheduler.step(v, t, x).prev_sample.float()
        if output_type == "pt":
            out = (x / 2 + 0.5).clamp(0, 1)
        else:
            out = to_pil(x)
            out = np.stack([np.asarray(im) for im in out]) if output_type == "np" else out
        return ImagePipelineOutput(images=out) if return_dict else (out,)
