"""Train the learned shapes reward: a tiny CLIP (transformers ``CLIPModel``) on rendered shapes-world
images and their captions, with the symmetric contrastive loss of CLIP.

``python -m stablenoise.shapes.train_reward OUT [STEPS]`` (the shipped one: ``weights/shapes-reward``).
Images are drawn from the training split once, up front (rendering is the slow part on a CPU); each
step takes a random batch of them. Seeded (bit-exact on the same machine and thread count).
The shipped weights took 8.5 minutes on one CPU thread.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import trange

from . import world
from .pipeline import MAX_TOKENS, build_tokenizer


@dataclass
class RewardTrainConfig:
    steps: int = 2000
    batch_size: int = 128
    dataset: int = 40000
    lr: float = 2e-3
    warmup: int = 100
    weight_decay: float = 0.05
    seed: int = 0


def clip_config(vocab_size: int):
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=vocab_size - 2,
                eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  image_size=world.RESOLUTION, patch_size=4)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)


def dataset(cfg: RewardTrainConfig):
    rng = np.random.default_rng(cfg.seed)
    samples = [world.sample(rng, "train") for _ in range(cfg.dataset)]
    images = torch.from_numpy(np.stack([s.image for s in samples])).permute(0, 3, 1, 2).contiguous()
    return images, [s.caption for s in samples]


def train(out: str | Path, cfg: RewardTrainConfig = RewardTrainConfig()) -> Path:
    from transformers import CLIPModel

    torch.manual_seed(cfg.seed)
    tokenizer = build_tokenizer(world.vocabulary())
    model = CLIPModel(clip_config(len(tokenizer)))
    images, captions = dataset(cfg)
    tokens = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses, start = [], time.time()
    bar = trange(cfg.steps, desc="train shapes-clip", unit="step")
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
        pixels = (images[idx].float() / 255 - 0.5) / 0.5
        out_ = model(input_ids=tokens["input_ids"][idx], attention_mask=tokens["attention_mask"][idx],
                     pixel_values=pixels)
        # Captions repeat within a batch: every image whose caption matches is a positive.
        ids = tokens["input_ids"][idx]
        same = (ids[:, None, :] == ids[None, :, :]).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        logits = out_.logits_per_image
        loss = 0.5 * (-(target * F.log_softmax(logits, 1)).sum(1).mean()
                      - (target * F.log_softmax(logits.t(), 1)).sum(1).mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 100 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-100:]):.4f}", lr=f"{lr:.2e}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "train_log.json").write_text(json.dumps({"config": asdict(cfg), "losses": losses[::10],
                                                    "seconds": time.time() - start}, indent=1) + "\n")
    return out


def corrupt(caption: str, rng: np.random.Generator) -> str:
    """The caption with its first colour (or else its first shape) changed: a near miss."""
    words = caption.split()
    shapes = {**{s: s for s in world.SHAPES}, **{world.plural(s): s for s in world.SHAPES}}
    for i, w in enumerate(words):
        if w in world.COLORS:
            words[i] = str(rng.choice([c for c in world.COLORS if c != w]))
            return " ".join(words)
    for i, w in enumerate(words):
        if w in shapes:
            new = str(rng.choice([s for s in world.SHAPES if s != shapes[w]]))
            words[i] = new if w == shapes[w] else world.plural(new)
            return " ".join(words)
    return caption


def evaluate(reward, n: int = 500, seed: int = 1) -> dict:
    """How often the reward ranks a held-out image's caption above another image's caption, and above
    a near miss (one colour or shape changed)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    samples = [world.sample(rng, "heldout") for _ in range(n)]
    images = [Image.fromarray(s.image) for s in samples]
    true = reward(images, [s.caption for s in samples])
    other = reward(images, [samples[(i + 1) % n].caption for i in range(n)])
    near = reward(images, [corrupt(s.caption, rng) for s in samples])
    return {"n": n, "split": "heldout", "beats_other_caption": float((true > other).float().mean()),
            "beats_near_miss": float((true > near).float().mean())}


if __name__ == "__main__":
    from ..rewards import load_reward

    torch.set_flush_denormal(True)
    torch.set_num_threads(1)  # reproducible, and polite to whatever else runs
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else RewardTrainConfig.steps
    folder = train(sys.argv[1], RewardTrainConfig(steps=steps))
    result = evaluate(load_reward(f"shapes-clip:{folder}", device="cpu"))
    log = json.loads((folder / "train_log.json").read_text())
    (folder / "train_log.json").write_text(json.dumps({**log, "evaluation": result}, indent=1) + "\n")
    print(result)
