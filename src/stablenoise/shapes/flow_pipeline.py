"""The shapes world with a flow-matching objective (``--model shapes-flow``).

The same pixel-space UNet and CLIP text encoder as :class:`ShapesPipeline` (they train in the CPU budget),
trained to predict the velocity eps - x0 of x_sigma = (1 - sigma) x0 + sigma eps, as SD3 and FLUX are,
and sampled with ``FlowMatchEulerDiscreteScheduler``. The UNet's timestep is sigma * 1000, the
scheduler's own timestep, as SD3's transformer takes it.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from .pipeline import ShapesPipeline, build_tokenizer, text_encoder_config, unet_config


def scheduler_config() -> dict:
    # No shift: a 32x32 image has 1024 pixels, SD3's shift 3 is for 128x128 latents (dynamic shifting
    # would give mu ~ 0.5 here, i.e. a shift of ~1.6; 1.0 keeps the sigmas uniform and the model simple).
    return dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)


class ShapesFlowPipeline(ShapesPipeline):
    """Pixel-space flow-matching text-to-image: ``pipe(prompt, latents=..., num_inference_steps=..., guidance_scale=...)``."""

    def __init__(self, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: FlowMatchEulerDiscreteScheduler):
        # Its own signature: diffusers reads the expected scheduler class from it when loading.
        super().__init__(unet, text_encoder, tokenizer, scheduler)

    @classmethod
    def from_scratch(cls, words: list[str], resolution: int = 32, seed: int = 0, **unet_overrides
                     ) -> "ShapesFlowPipeline":
        torch.manual_seed(seed)
        tok = build_tokenizer(words)
        te = CLIPTextModel(text_encoder_config(len(tok)))
        unet = UNet2DConditionModel(**unet_config(resolution, te.config.hidden_size, **unet_overrides))
        return cls(unet, te, tok, FlowMatchEulerDiscreteScheduler(**scheduler_config()))

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], num_inference_steps: int = 20, guidance_scale: float = 2.0,
                 latents: torch.Tensor | None = None, generator: torch.Generator | None = None,
                 num_images_per_prompt: int = 1, output_type: str = "pil", return_dict: bool = True):
        cond, latents = self._prepare(prompt, num_images_per_prompt, guidance_scale, latents, generator)
        x = latents.to(self.device, torch.float32)
        cfg = guidance_scale > 1
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            inp = (torch.cat([x, x]) if cfg else x).to(self.unet.dtype)
            v = self.unet(inp, t.expand(inp.shape[0]), encoder_hidden_states=cond).sample
            if cfg:
                u, cv = v.chunk(2)
                v = u + guidance_scale * (cv - u)
            x = self.scheduler.step(v, t, x).prev_sample.float()
        return self._output(x, output_type, return_dict)
