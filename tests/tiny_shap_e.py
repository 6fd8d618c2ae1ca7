"""A tiny random-weight Shap-E pipeline built from configs (no downloads), sized as diffusers' fast tests size theirs,
and an analytic prior for exact checks of the round trip."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from diffusers import HeunDiscreteScheduler, PriorTransformer, ShapEPipeline
from diffusers.pipelines.shap_e import ShapERenderer
from transformers import CLIPTextModelWithProjection

from stablenoise.shapes.pipeline import build_tokenizer
from tiny import WORDS, _text_config
from toy import ExactGaussian

EMBED, RENDER = 16, 8  # latent width; renderer MLP width
TOKENS = 4 * RENDER  # the renderer projects RENDER latent rows into each of its 4 MLP layers


def shap_e_scheduler() -> HeunDiscreteScheduler:
    # openai/shap-e's scheduler config.
    return HeunDiscreteScheduler(beta_schedule="exp", num_train_timesteps=1024, prediction_type="sample",
                                 use_karras_sigmas=True, clip_sample=True, clip_sample_range=1.0)


def tiny_shap_e(seed: int = 0) -> ShapEPipeline:
    torch.manual_seed(seed)
    tok = build_tokenizer(WORDS)
    text_encoder = CLIPTextModelWithProjection(_text_config(tok, hidden=32, projection=32))
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=8, embedding_dim=EMBED,
                             num_embeddings=TOKENS, embedding_proj_dim=32, time_embed_dim=4 * EMBED, num_layers=1,
                             clip_embed_dim=2 * EMBED, additional_embeddings=0, time_embed_act_fn="gelu",
                             norm_in_type="layer", encoder_hid_proj_type=None, added_emb_type=None)
    renderer = ShapERenderer(param_shapes=((RENDER, 93), (RENDER, 8), (RENDER, 8), (RENDER, 8)),
                             d_latent=EMBED, d_hidden=RENDER, n_output=12, background=(200.0, 120.0, 40.0))
    return ShapEPipeline(prior=prior.eval(), text_encoder=text_encoder, tokenizer=tok,
                         scheduler=shap_e_scheduler(), shap_e_renderer=renderer)


class GaussianPrior(ExactGaussian):
    """The exact x0 prediction E[x0 | x_t] for data x0 ~ N(mu, sigma^2 I), shaped as a PriorTransformer's output
    (predicted x0, then a 'variance' half filled with a constant that must be ignored).

    x_t = sqrt(a) x0 + sqrt(1 - a) eps  =>  E[x0 | x_t] = mu + sqrt(a) sigma^2 (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a).
    """

    def __init__(self, alphas_cumprod, mu=0.1, sigma=0.2):
        super().__init__(alphas_cumprod, mu, sigma)
        self.config = SimpleNamespace(num_embeddings=TOKENS, embedding_dim=EMBED)

    def forward(self, x, timestep, proj_embedding=None):
        a = self.alphas_cumprod[int(timestep)]
        x0 = self.mu + a.sqrt() * self.sigma ** 2 * (x - a.sqrt() * self.mu) / (a * self.sigma ** 2 + 1 - a)
        return SimpleNamespace(predicted_image_embedding=torch.cat([x0, torch.full_like(x0, 7.0)], -1))
