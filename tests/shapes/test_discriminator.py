import math

import pytest
import torch

from stablenoise.shapes.discriminator import Discriminator, adaptive_weight, discriminator_step, hinge_losses


def test_the_discriminator_judges_4x4_patches_and_reads_the_caption():
    torch.manual_seed(0)
    d = Discriminator(text_dim=8).eval()  # eval: spectral norm's power iteration does not move between calls
    images, text = torch.randn(2, 3, 32, 32), torch.randn(2, 8)
    logits = d(images, text)
    assert logits.shape == (2, 16)
    other = d(images, torch.stack([text[0], -text[1]]))  # another caption for the second image only
    assert torch.allclose(other[0], logits[0]) and not torch.allclose(other[1], logits[1])
    assert not torch.allclose(d(images.flip(-1), text), logits)  # and the image


def test_hinge_losses_count_only_logits_inside_the_margin():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert hinge_losses(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert hinge_losses(torch.tensor([1.0]), torch.tensor([-1.0])).item() == 0


def test_adaptive_weight_is_the_ratio_of_the_gradient_norms_at_the_last_layer():
    last = torch.tensor([1.0, 2.0], requires_grad=True)
    other = torch.tensor(5.0, requires_grad=True)  # a layer before: its gradients do not count
    distill = (3 * last).sum() + 100 * other
    adversarial = (torch.tensor([0.0, 4.0]) * last).sum() - 7 * other
    w = adaptive_weight(distill, adversarial, last)
    assert w.item() == pytest.approx(3 * math.sqrt(2) / (4 + 1e-4)) and not w.requires_grad
    assert adaptive_weight(distill, 0 * last.sum(), last).item() == pytest.approx(1e4)  # capped
    (distill + w * adversarial).backward()  # the graphs are kept for the step
    assert last.grad.tolist() == pytest.approx([3, 3 + 4 * w.item()])


def test_discriminator_steps_learn_to_tell_sharp_squares_from_rounded_ones():
    """What the student is missing: a square's corners. Real images hold a sharp square, fakes the same square
    blurred (its corners rounded); the discriminator's steps must learn to score the real ones higher."""
    torch.manual_seed(0)
    square = torch.full((1, 3, 32, 32), -1.0)
    square[..., 8:24, 8:24] = 1.0
    real = square.roll(shifts=(3, -2), dims=(2, 3)).expand(8, -1, -1, -1).clone()
    blur = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(real, (2, 2, 2, 2), mode="replicate"), 5, 1)
    text = torch.randn(8, 4)
    d = Discriminator(text_dim=4)
    opt = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.0, 0.99))
    losses = [discriminator_step(d, opt, real=real, fake=blur, text=text) for _ in range(30)]
    d.eval()
    assert losses[-1] < losses[0] and (d(real, text).mean() - d(blur, text).mean()).item() > 1.0


def test_discriminator_steps_learn_which_caption_an_image_matches():
    """Real images under another row's caption are fakes: trained on squares captioned A and circles captioned B
    (and equally sharp fakes that are neither), the discriminator must score a square higher under A than under B."""
    torch.manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    square = ((yy - 15.5).abs() < 8) & ((xx - 15.5).abs() < 8)
    circle = (yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 81
    real = torch.stack([(m.float() * 2 - 1).expand(3, -1, -1) for m in [square, circle] * 4])
    text = torch.stack([torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])] * 4)
    fake = -torch.ones_like(real)  # blank: no caption's image
    d = Discriminator(text_dim=2)
    opt = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.0, 0.99))
    for _ in range(60):
        discriminator_step(d, opt, real=real, fake=fake, text=text)
    d.eval()
    squares = real[::2]
    assert (d(squares, text[::2]) - d(squares, text[1::2])).mean().item() > 1.0
