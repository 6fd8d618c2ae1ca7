"""Backends without a UNet, for exact checks of the algorithms.

``ToyBackend``: a cheap, smooth, prompt-dependent round trip whose stability is below 1 and can be raised by
gradient descent; a prompt listed in ``poison`` turns its sample's output NaN from a given call on.

``gaussian_backend``: a ``DiffusersBackend`` (the real DDIM code path) whose "UNet" is the exact noise
predictor for Gaussian data x0 ~ N(mu, sigma^2 I), so every DDIM result has a closed form.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from stablenoise.backends.base import Conditioning, Defaults, DiffusersBackend


class ToyBackend:
    name = "toy"
    latent_shape = (2, 4, 4)
    device = torch.device("cpu")
    dtype = torch.float32
    defaults = Defaults(steps=2, guidance=1.0)

    def __init__(self, poison: dict[str, int] | None = None, bad_gradient: tuple[str, ...] = ()):
        g = torch.Generator().manual_seed(0)
        d = math.prod(self.latent_shape)
        self.mix = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
        self.poison = poison or {}
        self.bad_gradient = bad_gradient  # prompts whose round trip is finite but has a NaN gradient
        self.calls = 0

    def encode(self, prompts, guidance):
        ids = [sum(map(ord, p)) % 7 for p in prompts]  # a prompt means the same shift in every backend
        return Conditioning({"id": torch.tensor(ids, dtype=torch.float64),
                             "poison": torch.tensor([self.poison.get(p, -1) for p in prompts]),
                             "bad_gradient": torch.tensor([p in self.bad_gradient for p in prompts])})

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.calls += 1
        x = noise.flatten(1).to(torch.float64)
        shift = 0.1 * cond.cond["id"][:, None]
        z = torch.tanh(x @ self.mix.T * 0.5 + shift) * 2 * (1 + 0.01 * steps) + 0.01 * guidance  # settings matter
        bad = (cond.cond["poison"] >= 0) & (self.calls > cond.cond["poison"])
        z = torch.where(bad[:, None], torch.full_like(z, float("nan")), z)
        # sqrt has an infinite slope at 0: adds 0 to the value and NaN (0 * inf) to the gradient.
        rows = cond.cond["bad_gradient"].nonzero().flatten()
        if len(rows):
            z = z.index_add(0, rows, 0 * torch.sqrt((x[rows] - x[rows].detach()).clamp_min(0)))
        return z.view(noise.shape).to(noise.dtype)

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        z = latents.flatten(1).to(torch.float64)
        return (z @ self.mix * (1 + 0.02 * guidance) + 0.001 * steps).view(latents.shape).to(latents.dtype)

    def decode(self, latents):
        return [None] * latents.shape[0]

    def decode_pixels(self, latents):
        """A smooth map of the 2-channel latent to 3 channels in (0, 1)."""
        return torch.sigmoid(torch.stack([latents[:, 0], latents[:, 1], (latents[:, 0] - latents[:, 1]) / 2], 1))

    def generate(self, prompts, noise, steps, guidance, generators=None):
        return self.decode(noise)

    def describe(self):
        return {"backend": "ToyBackend"}


class ExactGaussian(torch.nn.Module):
    """A model of data x0 ~ N(mu, sigma^2 I) on a DDPM schedule, in float64: subclasses give the exact prediction."""

    def __init__(self, alphas_cumprod, mu, sigma):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64))
        self.mu, self.sigma = mu, sigma

    @property
    def device(self):
        return self.alphas_cumprod.device

    @property
    def dtype(self):
        return torch.float64


class GaussianEps(ExactGaussian):
    """The exact E[eps | x_t] for data x0 ~ N(mu, sigma^2 I), as a UNet-shaped module.

    x_t = sqrt(a) x0 + sqrt(1 - a) eps  =>  E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a);
    for v-prediction, v = sqrt(a) eps - sqrt(1 - a) x0.
    """

    def __init__(self, alphas_cumprod, mu=0.3, sigma=0.5, prediction_type="epsilon"):
        super().__init__(alphas_cumprod, mu, sigma)
        self.prediction_type = prediction_type
        self.config = SimpleNamespace(in_channels=1, sample_size=8)

    def forward(self, x, t, encoder_hidden_states=None):
        a = self.alphas_cumprod[int(t)]
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.sigma ** 2 + 1 - a)
        if self.prediction_type == "v_prediction":
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
            eps = a.sqrt() * eps - (1 - a).sqrt() * x0
        return SimpleNamespace(sample=eps)


class _GaussianBackend(DiffusersBackend):
    def _encode(self, prompts, guidance):
        return Conditioning({"encoder_hidden_states": torch.zeros(len(prompts), 1, dtype=torch.float64)})


def gaussian_backend(scheduler, mu=0.3, sigma=0.5, **overrides) -> DiffusersBackend:
    """A backend over the analytic predictor and ``scheduler``'s noise schedule and config."""
    from diffusers import DDIMScheduler

    alphas = DDIMScheduler.from_config(scheduler.config).alphas_cumprod
    prediction_type = overrides.get("prediction_type", scheduler.config.get("prediction_type", "epsilon"))
    unet = GaussianEps(alphas, mu, sigma, prediction_type)
    pipe = SimpleNamespace(scheduler=scheduler, unet=unet, components={"unet": unet})
    return _GaussianBackend(pipe=pipe, name="gaussian", defaults=Defaults(steps=10, guidance=1.0),
                            latent_shape=(1, 8, 8), scheduler_overrides=overrides)


class ShiftBackend(ToyBackend):
    """F(eps) = eps + 2: on the Gaussian shell, stability peaks where eps points along the all-ones
    direction, so large steps overshoot the peak and the last iterate is not the best."""

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        return noise + 2

    def invert(self, latents, cond, steps, guidance, checkpoint=False):
        return latents


class QuadBackend(ToyBackend):
    """Denoise and decode are the identity on a [3, 2, 2] latent: a reward of the pixels is a function of the
    noise itself (say, a quadratic), for exact comparisons with ``torch.optim.SGD``."""

    latent_shape = (3, 2, 2)

    def denoise(self, noise, cond, steps, guidance, checkpoint=False):
        self.calls += 1
        return noise

    def decode_pixels(self, latents):
        return latents


class GaussianVelocity(torch.nn.Module):
    """The exact flow-matching velocity E[eps - x0 | x_t] for data x0 ~ N(mu, diag(sigma^2)), transformer-shaped.

    x_t = (1 - t) x0 + t eps is jointly Gaussian with x0 and eps; per dimension, with D = (1 - t)^2 sigma^2 + t^2,
    v(x, t) = (t - (1 - t) sigma^2) (x - (1 - t) mu) / D - mu. Its ODE maps eps to mu + sigma eps exactly.
    A sigma that varies across dimensions makes the discretization error change the noise's direction (an
    isotropic one only rescales it, which the cosine cannot see).
    """

    def __init__(self, mu, sigma, dtype=torch.float64):
        super().__init__()
        self._dtype = dtype  # a low-precision "model": inputs and outputs rounded to it
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=torch.float64))
        self.config = SimpleNamespace(in_channels=1, guidance_embeds=False)

    @property
    def device(self):
        return self.mu.device

    @property
    def dtype(self):
        return self._dtype

    def forward(self, hidden_states, timestep, encoder_hidden_states=None, return_dict=False):
        hidden_states = hidden_states.to(torch.float64)
        t = timestep.to(torch.float64).view(-1, *[1] * (hidden_states.ndim - 1)) / 1000
        x, mu, s2 = hidden_states, self.mu, self.sigma ** 2
        d = (1 - t) ** 2 * s2 + t ** 2
        return (((t - (1 - t) * s2) * (x - (1 - t) * mu) / d - mu).to(self._dtype),)


FLOW_MU = torch.linspace(-0.5, 0.5, 64, dtype=torch.float64).view(1, 8, 8)
FLOW_SIGMA = torch.linspace(0.2, 1.5, 64, dtype=torch.float64).view(1, 8, 8).flip(-1)


def gaussian_flow_backend(scheduler, mu=FLOW_MU, sigma=FLOW_SIGMA, dtype=torch.float64, **overrides):
    """A ``FlowBackend`` (the real Euler code path) over the analytic velocity and ``scheduler``'s sigmas."""
    from stablenoise.backends.flow import FlowBackend

    class _GaussianFlowBackend(FlowBackend):
        def _encode(self, prompts, guidance):
            return Conditioning({"encoder_hidden_states": torch.zeros(len(prompts), 1, dtype=torch.float64)})

        def _image_seq_len(self):
            return 64

    model = GaussianVelocity(mu, sigma, dtype)
    pipe = SimpleNamespace(scheduler=scheduler, transformer=model, components={"transformer": model})
    return _GaussianFlowBackend(pipe=pipe, name="gaussian-flow", defaults=Defaults(steps=10, guidance=1.0),
                                latent_shape=(1, 8, 8), scheduler_overrides=overrides)
