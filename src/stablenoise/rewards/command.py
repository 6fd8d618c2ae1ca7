"""``stablenoise reward``: score image files, or the images of a run folder, with a reward."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..cli_common import batch_size_option, device_option, dtype_option, guarded, out_option, out_path, prompt_options
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
@prompt_options
@device_option
@dtype_option
@batch_size_option
@out_option
@guarded
def reward(images, reward_name, prompt_list, prompts_spec, device, dtype, batch_size, out):
    """Score images (files, or the images of run folders) with a reward model; print and write JSON. The prompts
    (--prompt, --prompts) are one for all images, or one per image; a run folder brings its own."""
    from ..batching import auto_batch_size, map_batches
    from ..outputs import slug
    from ..prompts import load_prompts
    from ..records import now, versions, write_json_atomic
    from .registry import default_device, load_reward

    if any(not p.strip() for p in prompt_list):
        raise StablenoiseError("empty prompt")
    prompts = list(prompt_list) + (load_prompts(prompts_spec).texts if prompts_spec else [])
    pairs = collect(list(images), prompts)
    for path, _ in pairs:  # a bad file fails here, not after the reward model loaded and half the images scored
        open_image(path, header_only=True)
    model = load_reward(reward_name, device=device, dtype=dtype)
    if model.needs_prompts and any(p is None for _, p in pairs):
        raise StablenoiseError(f"reward {model.name!r} needs a prompt: use --prompt TEXT")

    def score(chunk):
        scores = model([open_image(p) for p, _ in chunk], [q for _, q in chunk] if model.needs_prompts else None)
        return scores.tolist()

    def show(chunk, scores):
        for (path, prompt), value in zip(chunk, scores):
            click.echo(f"{value:.6f}\t{path}" + (f"\t{prompt!r}" if prompt else ""))

    # automatic: on a GPU one image measures the memory of a sample; on CPU up to batching.CPU_BATCH images
    batch_size = batch_size or auto_batch_size(default_device(device), lambda: score(pairs[:1]), len(pairs))
    results = [{"image": str(path), "prompt": prompt, "score": value}
               for (path, prompt), value in zip(pairs, map_batches(score, pairs, batch_size, show))]
    out = out_path(out, "reward", f"{slug(model.name)}.json")
    try:
        write_json_atomic(out, {"command": "reward", "created": now(), "reward": model.name, "source": reward_name,
                                "higher_is_better": model.higher_is_better, "items": results,
                                "versions": versions()})
    except OSError as e:
        raise StablenoiseError(f"cannot write {out}: {e.strerror or e}") from None
    click.echo(f"wrote {out}")
