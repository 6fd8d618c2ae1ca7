"""The shipped shapes-world model (``ShapesPipeline``): pixel space, so decoding is a rescale."""

from __future__ import annotations

from pathlib import Path

from .pipeline import to_pil
from ..backends.base import DiffusersBackend
from ..backends.denoiser import Conditioning, uses_cfg
from ..backends.protocol import Defaults


class ShapesBackend(DiffusersBackend):
    def _encode(self, prompts, guidance):
        prompts = list(prompts)
        cond = {"encoder_hidden_states": self.pipe.encode_prompt(prompts)}
        uncond = {"encoder_hidden_states": self.pipe.encode_prompt([""] * len(prompts))} if uses_cfg(guidance) else None
        return Conditioning(cond, uncond)

    def decode(self, latents):
        return to_pil(latents)

    def decode_pixels(self, latents):
        return (latents.float() / 2 + 0.5).clamp(0, 1)  # to_pil's rescale, before the 8-bit rounding


WEIGHTS = Path(__file__).resolve().parent.parent / "weights"


def family():
    """The shapes world's model families, registered through the ``stablenoise.backends`` entry point:
    ``--model shapes`` (SD/SDXL-style scaled-linear betas, trailing spacing) and ``--model shapes-cosine``
    (the first shipped model: cosine betas, leading spacing), the flow-matching ``shapes-flow`` and the
    few-step ``shapes-turbo`` (distilled from ``shapes``; 4 steps at CFG 1.5 by default)."""
    from ..backends.registry import Family
    from .flow_backend import ShapesFlowBackend
    from .flow_pipeline import ShapesFlowPipeline
    from .pipeline import ShapesPipeline

    # ``--model shapes-flow`` once trained weights are shipped (stablenoise train-shapes --objective flow).
    flow_models = {"shapes-flow": WEIGHTS / "shapes-flow"} if (WEIGHTS / "shapes-flow").is_dir() else {}
    # ``--model shapes-turbo``: distilled from ``shapes`` for 1-4 steps without CFG (stablenoise distill-shapes);
    # the name says "turbo", so it takes turbo_defaults. Those sample it with a light CFG (LCM-LoRA's cards advise
    # 1 to 2) over the unconditional branch it inherited from the teacher (distillation never trains it): 8
    # network calls at 4 steps, and the setting at which it meets its bar (docs/regimes/turbo-quality-cfg.json:
    # 69.6% against 66.9% without, and the teacher's grain). Guidance 1 runs it without CFG, as SDXL-turbo runs.
    turbo = {"shapes-turbo": WEIGHTS / "shapes-turbo"} if (WEIGHTS / "shapes-turbo").is_dir() else {}
    return [Family("shapes-flow", ShapesFlowPipeline, ShapesFlowBackend, Defaults(steps=10, guidance=2.0),
                   models=flow_models, fixed_size=True),
            Family("shapes", ShapesPipeline, ShapesBackend, Defaults(steps=10, guidance=2.0),
                   turbo_defaults=Defaults(steps=4, guidance=1.5),
                   models={"shapes": WEIGHTS / "shapes", "shapes-cosine": WEIGHTS / "shapes-cosine", **turbo},
                   fixed_size=True)]
