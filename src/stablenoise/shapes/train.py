"""Train the shapes-world model: ``stablenoise train-shapes --out DIR`` (``--objective flow``: the
flow-matching ``ShapesFlowPipeline``).

Seeded and reproducible: the batch of step i is drawn from ``default_rng([seed, i])``, so a run
resumed from a checkpoint sees exactly the data an uninterrupted run would. Checkpoints are written
atomically every ``checkpoint_every`` steps; the final pipeline holds the EMA weights, in
safetensors, with a loss curve plot and a JSON log beside it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from ..records import versions
from . import world
from .flow_pipeline import ShapesFlowPipeline
from .pipeline import ShapesPipeline

OBJECTIVES = ("epsilon", "flow")


@dataclass
class TrainConfig:
    steps: int = 6000
    batch_size: int = 64
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    caption_dropout: float = 0.1  # empty caption, so that classifier-free guidance works
    seed: int = 0
    checkpoint_every: int = 500
    threads: int = 0  # 0: torch's default
    schedule: str = "scaled_linear"  # see shapes.pipeline.scheduler_config
    init: str | None = None  # a shapes pipeline folder whose weights start the run (fine-tuning)
    objective: str = "epsilon"  # "epsilon": DDPM noise prediction; "flow": velocity of the straight path
    device: str = "cpu"  # the data and every random draw stay on the CPU, so a GPU run sees the same batches
    workers: int = 0  # processes drawing batches ahead of the model (0: drawn inline)


def batch(cfg: TrainConfig, step: int) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng([cfg.seed, step])
    samples = [world.sample(rng, "train") for _ in range(cfg.batch_size)]
    images = np.stack([s.image for s in samples]).astype(np.float32) / 127.5 - 1.0
    captions = [("" if rng.random() < cfg.caption_dropout else s.caption) for s in samples]
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), captions


def _batch_arrays(cfg: TrainConfig, step: int) -> tuple[np.ndarray, list[str]]:
    x0, captions = batch(cfg, step)  # numpy across processes: torch tensors would go through shared memory
    return x0.numpy(), captions


def batches(cfg: TrainConfig, steps: range):
    """The batches of ``steps`` in order; with ``cfg.workers`` they are drawn by that many processes,
    at most two per worker ahead of the model. Each batch depends on (seed, step) alone, so the data
    is the same either way."""
    if not cfg.workers:
        yield from (batch(cfg, step) for step in steps)
        return
    import multiprocessing
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from itertools import islice

    # spawn: a forked child of a process that has initialised CUDA cannot use it, and needs not.
    with ProcessPoolExecutor(cfg.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        todo = iter(steps)
        ahead = deque(pool.submit(_batch_arrays, cfg, step) for step in islice(todo, 2 * cfg.workers))
        while ahead:
            x0, captions = ahead.popleft().result()
            ahead.extend(pool.submit(_batch_arrays, cfg, step) for step in islice(todo, 1))
            yield torch.from_numpy(x0), captions


def lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def noisy_input(cfg: TrainConfig, noise_sched, x0, noise, g) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model input, model timestep, regression target) of one training batch under the objective."""
    if cfg.objective == "flow":
        # SD3's logit-normal sigmas (mean 0, std 1): most samples at mid noise, where velocity is hardest.
        sigma = torch.sigmoid(torch.randn(x0.shape[0], generator=g)).view(-1, 1, 1, 1)
        return (1 - sigma) * x0 + sigma * noise, sigma.flatten() * 1000, noise - x0
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],), generator=g)
    return noise_sched.add_noise(x0, noise, t), t, noise


def atomic_dir(target: Path, write) -> None:
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    old = target.with_name(target.name + ".old")
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def train(out: str | Path, cfg: TrainConfig = TrainConfig(), progress: bool = True) -> Path:
    torch.set_flush_denormal(True)  # ~18x faster small convolutions on CPU
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {cfg.objective!r}; use one of {', '.join(OBJECTIVES)}")
    flow = cfg.objective == "flow"
    cls = ShapesFlowPipeline if flow else ShapesPipeline
    device = torch.device(cfg.device)
    pipe = (ShapesFlowPipeline.from_scratch(world.vocabulary(), world.RESOLUTION, seed=cfg.seed) if flow else
            ShapesPipeline.from_scratch(world.vocabulary(), world.RESOLUTION, seed=cfg.seed, schedule=cfg.schedule))
    if cfg.init:
        start_from = cls.from_pretrained(cfg.init)
        pipe.unet.load_state_dict(start_from.unet.state_dict())
        pipe.text_encoder.load_state_dict(start_from.text_encoder.state_dict())
    pipe.to(device)
    modules = torch.nn.ModuleList([pipe.unet, pipe.text_encoder])
    noise_sched = None if flow else DDPMScheduler.from_config(pipe.scheduler.config)
    opt = torch.optim.AdamW(modules.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = EMAModel(modules.parameters(), decay=cfg.ema_decay, foreach=True)  # one kernel per op, not per tensor
    losses: list[float] = []
    start = 0
    ckpt = out / "checkpoint"
    if (ckpt / "state.pt").exists():  # resume
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location=device)
        modules.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        losses, start = list(state["losses"]), int(state["step"])

    def save_checkpoint(step: int) -> None:
        state = {"model": modules.state_dict(), "optimizer": opt.state_dict(),
                 "ema": ema.state_dict(), "losses": losses, "step": step}
        atomic_dir(ckpt, lambda d: torch.save(state, d / "state.pt"))

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc="train shapes",
               disable=not progress)
    t0 = time.time()
    data = batches(cfg, range(start, cfg.steps))
    for step, (x0, captions) in zip(bar, data):
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        noise = torch.randn(x0.shape, generator=g)
        x_t, t, target = (v.to(device) for v in noisy_input(cfg, noise_sched, x0, noise, g))
        cond = pipe.encode_prompt(captions)
        pred = pipe.unet(x_t, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        for group in opt.param_groups:
            group["lr"] = lr_at(cfg, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        opt.step()
        ema.step(modules.parameters())
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(step + 1)
    elapsed = time.time() - t0
    data.close()  # zip stops on the bar, leaving the generator suspended: shut its worker pool down now

    ema.copy_to(modules.parameters())
    pipe.to("cpu")
    final = out / "model"

    def write_final(d: Path) -> None:
        pipe.save_pretrained(d, safe_serialization=True)
        log = {"config": asdict(cfg), "versions": versions(), "final_loss_ema100": float(np.mean(losses[-100:])),
               "seconds_this_run": elapsed,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
               "losses": losses}
        (d / "train_log.json").write_text(json.dumps(log))
        plot_losses(losses, d / "loss.png")

    atomic_dir(final, write_final)
    shutil.rmtree(ckpt, ignore_errors=True)
    return final


def plot_losses(losses: list[float], path: Path, title: str = "shapes-world training loss") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(losses, lw=0.5, alpha=0.4, label="loss")
    w = min(100, len(losses))
    if w > 1:
        ax.plot(np.arange(w - 1, len(losses)), np.convolve(losses, np.ones(w) / w, "valid"), label=f"mean of {w}")
    ax.set(xlabel="step", ylabel="MSE", yscale="log", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # pragma: no cover
    import sys
    train(sys.argv[1] if len(sys.argv) > 1 else "runs/shapes",
          TrainConfig(steps=int(os.environ.get("STEPS", TrainConfig.steps))))
