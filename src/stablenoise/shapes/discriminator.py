"""The adversarial half of shapes-turbo's later stages: a small caption-conditioned patch discriminator.

Adversarial diffusion distillation (ADD, Sauer et al. 2023, SDXL-turbo's recipe) adds to the distillation loss a
discriminator that judges the student's one-step image estimate against real images, because a regression to the
teacher's image averages what the first step is unsure of. Here that average is visible: corners the student cannot
place are rounded, and the verifier then reads the square as a circle. ADD's discriminator is trainable heads on a
frozen DINOv2; this world has no such feature network (and its reward models are what the bench judges with), so
the discriminator is trained from scratch: spectrally normalised convolutions (Miyato et al. 2018) down to a 4 x 4
grid of patch logits, each with a projection term for the caption (Miyato & Koyama 2018), and trained to call a
real image under another caption fake, so a sharp square for "a red circle" is a fake too.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class Discriminator(nn.Module):
    """``D(images, text) -> patch logits [B, P]``; ``text`` is one caption embedding per image [B, text_dim]."""

    def __init__(self, text_dim: int, channels: int = 3, width: int = 32):
        super().__init__()
        layers, c = [spectral_norm(nn.Conv2d(channels, width, 3, padding=1)), nn.LeakyReLU(0.2)], width
        for mult in (2, 4, 4):  # 32 -> 16 -> 8 -> 4
            layers += [spectral_norm(nn.Conv2d(c, width * mult, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            c = width * mult
        self.body = nn.Sequential(*layers)
        self.patch = spectral_norm(nn.Conv2d(c, 1, 1))
        self.embed = spectral_norm(nn.Linear(text_dim, c))

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        h = self.body(images)
        projection = (self.embed(text)[:, :, None, None] * h).sum(1, keepdim=True)
        return (self.patch(h) + projection).flatten(1)


def hinge_losses(real: torch.Tensor, *fakes: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (Lim & Ye 2017) from its logits on real images and on each kind of fake
    (the fakes' terms averaged, so that more kinds do not outweigh the reals)."""
    return torch.relu(1 - real).mean() + sum(torch.relu(1 + f).mean() for f in fakes) / len(fakes)


def discriminator_step(disc: Discriminator, opt: torch.optim.Optimizer, real: torch.Tensor, fake: torch.Tensor,
                       text: torch.Tensor) -> float:
    """One optimizer step of ``disc`` on real and fake images (the fakes detached: the generator is not trained
    here); returns the loss. Real images under another row's caption count as fakes too (the matching-aware
    discriminator of Reed et al. 2016): without them it can tell the student's images by their finish alone, and
    the student learned clean circles, the easiest clean shape, where the caption asked for a square."""
    other = text.roll(1, dims=0)
    mismatched = (other != text).any(dim=1)  # rows whose neighbour has another caption
    fakes = [disc(fake.detach(), text)]
    if mismatched.any():
        fakes.append(disc(real[mismatched], other[mismatched]))
    loss = hinge_losses(disc(real, text), *fakes)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def adaptive_weight(distill_loss: torch.Tensor, adversarial_loss: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """|grad distill| / |grad adversarial| at the generator's last layer ``last`` (Esser et al. 2021, VQGAN), so the
    adversarial term pulls as hard as the regression whatever the logits' scale; detached, at most 1e4."""
    g_distill, = torch.autograd.grad(distill_loss, last, retain_graph=True)
    g_adversarial, = torch.autograd.grad(adversarial_loss, last, retain_graph=True)
    return (g_distill.norm() / (g_adversarial.norm() + 1e-4)).clamp(max=1e4).detach()
