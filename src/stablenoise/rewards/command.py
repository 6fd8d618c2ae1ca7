"""``stablenoise reward``: score image files, or the images of a run folder, with a reward."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_common import guarded
from ..errors import StablenoiseError
from ..loading import first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def run_folder_items(folder: Path) -> list[tuple[Path, str]]:
    """(image, prompt) for every image of every item of a stablenoise run folder; side-by-side
    composites (``*_vs_*``) are left out."""
    record = json.loads((folder / "run.json").read_text())
    pairs = []
    for item in record.get("items", []):
        sub = folder / item["folder"]
        pairs += [(p, item["prompt"]) for p in sorted(sub.iterdir())
                  if p.suffix.lower() in IMAGE_SUFFIXES and "_vs_" not in p.stem]
    if not pairs:
        raise StablenoiseError(f"{folder}: no images in the run folder")
    return pairs


def collect(paths: list[Path], prompts: list[str]) -> list[tuple[Path, str | None]]:
    """Pair image files with prompts: one prompt for all, or one per image. A run folder brings its own."""
    pairs, files = [], []
    for path in paths:
        if path.is_dir():
            if not (path / "run.json").is_file():
                raise StablenoiseError(f"{path}: a folder must be a stablenoise run folder (no run.json)")
            pairs += run_folder_items(path)
        elif path.is_file():
            files.append(path)
        else:
            raise StablenoiseError(f"image not found: {path}")
    if files and not prompts:
        pairs += [(f, None) for f in files]  # fine for image-only rewards (aesthetic); others say so
    elif files:
        if len(prompts) not in (1, len(files)):
            raise StablenoiseError(f"{len(files)} images but {len(prompts)} prompts: give one prompt for all "
                                   f"or one per image")
        pairs += list(zip(files, prompts * len(files) if len(prompts) == 1 else prompts))
    elif prompts and pairs:
        raise StablenoiseError("a run folder brings its own prompts: drop --prompt")
    return pairs


def open_image(path: Path, header_only: bool = False):
    """A user's image file as RGB, every way it can fail as one line naming the file: missing, not an image,
    truncated or corrupt, or claiming more pixels than PIL's decompression-bomb limit (checked from the header,
    before any pixel is decoded). ``header_only``: only those checks of the header, nothing decoded (None)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return None if header_only else im.convert("RGB")
    except FileNotFoundError:
        raise StablenoiseError(f"image not found: {path}") from None
    except Image.DecompressionBombError as e:
        raise StablenoiseError(f"{path}: refused, too many pixels ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:  # PIL's corrupt-file errors
        raise StablenoiseError(f"{path}: not an image ({first_line(e)})") from None


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reward", "reward_name", required=True,
              help="hpsv2, hpsv2.1, pickscore, imagereward, aesthetic, clipscore, shapes-verifier, shapes-clip; "
                   "a hub id; a local file or folder; or NAME:HUB_ID_OR_PATH.")
@click.option("--prompt", "prompt_list", multiple=True, help="One prompt for all images, or one per image (repeat).")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help="A file of prompts, one per image (as --prompts of the other commands).")
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda if available).")
@click.option("--dtype", default=None, help="float32 (default), float16 or bfloat16.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="JSON file of the scores (default: stablenoise-out/reward/REWARD.json).")
@guarded
def reward(images, reward_name, prompt_list, prompts_file, device, dtype, batch_size, out):
    """Score images (files, or the images of run folders) with a reward model; print and write JSON."""
    from ..outputs import read_prompts, slug
    from ..records import now, versions, write_json_atomic
    from .registry import load_reward

    prompts = list(prompt_list) + (read_prompts(prompts_file) if prompts_file else [])
    pairs = collect(list(images), prompts)
    for path, _ in pairs:  # a bad file fails here, not after the reward model loaded and half the images scored
        open_image(path, header_only=True)
    model = load_reward(reward_name, device=device, dtype=dtype)
    if model.needs_prompts and any(p is None for _, p in pairs):
        raise StablenoiseError(f"reward {model.name!r} needs a prompt: use --prompt TEXT")
    results = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        scores = model([open_image(p) for p, _ in chunk], [q for _, q in chunk] if model.needs_prompts else None)
        for (path, prompt), score in zip(chunk, scores.tolist()):
            results.append({"image": str(path), "prompt": prompt, "score": score})
            click.echo(f"{score:.6f}\t{path}" + (f"\t{prompt!r}" if prompt else ""))
    out = out or Path("stablenoise-out") / "reward" / f"{slug(model.name)}.json"
    try:
        write_json_atomic(out, {"command": "reward", "created": now(), "reward": model.name, "source": reward_name,
                                "higher_is_better": model.higher_is_better, "items": results,
                                "versions": versions()})
    except OSError as e:
        raise StablenoiseError(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"wrote {out}")
