"""Reading prompt files and writing run folders: images, noises and the JSON record of a run."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw
from safetensors.torch import save_file

from .errors import StablenoiseError
from .records import now, versions, write_json_atomic

PROMPT_COLUMNS = ("prompt", "Prompt", "Prompts", "caption", "text")


def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one a line, ``#`` comments) or a CSV/TSV with a prompt column."""
    path = Path(path)
    if not path.is_file():
        raise StablenoiseError(f"prompts file not found: {path}")
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            column = next((c for c in PROMPT_COLUMNS if c in (reader.fieldnames or [])), None)
            if column is None:
                raise StablenoiseError(f"{path}: no prompt column (one of {', '.join(PROMPT_COLUMNS)})")
            prompts = [row[column].strip() for row in reader if (row.get(column) or "").strip()]
    else:
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise StablenoiseError(f"{path}: no prompts in file")
    return prompts


def slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "prompt"


def upscale(image: Image.Image, min_side: int = 128) -> Image.Image:
    """Small images (the 32x32 shapes world) are enlarged with nearest neighbours to be visible."""
    factor = max(1, -(-min_side // min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def side_by_side(images: Sequence[Image.Image], labels: Sequence[str]) -> Image.Image:
    tiles = [upscale(im) for im in images]
    w, h = sum(t.width for t in tiles), max(t.height for t in tiles)
    canvas = Image.new("RGB", (w, h + 16), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for tile, label in zip(tiles, labels):
        canvas.paste(tile, (x, 16))
        draw.text((x + 3, 2), label, fill="black")
        x += tile.width
    return canvas


class RunFolder:
    """One run's output folder. Each item is written to a temporary folder and renamed into place
    when complete; ``run.json`` is rewritten atomically after each item, so an interrupted run keeps
    everything it finished and nothing half-written."""

    def __init__(self, out: str | Path, command: str, parameters: dict, model: dict):
        self.root = Path(out)
        self.root.mkdir(parents=True, exist_ok=True)
        self.record = {"command": command, "created": now(), "status": "running", "parameters": parameters,
                       "model": model, "versions": versions(), "items": []}
        self.flush()

    def item_dir(self, index: int, prompt: str) -> Path:
        return self.root / f"{index:03d}-{slug(prompt)}"

    def add(self, index: int, prompt: str, record: dict, images: dict[str, Image.Image] | None = None,
            tensors: dict | None = None) -> Path:
        final = self.item_dir(index, prompt)
        tmp = final.with_name(final.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name, image in (images or {}).items():
            image.save(tmp / f"{name}.png")
        if tensors:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / "noise.safetensors"))
        record = {"index": index, "prompt": prompt, "folder": final.name, **record}
        write_json_atomic(tmp / "record.json", record)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        self.record["items"].append(record)
        self.flush()
        return final

    def finish(self, **extra) -> None:
        self.record.update(status="complete", finished=now(), **extra)
        self.flush()

    def flush(self) -> None:
        write_json_atomic(self.root / "run.json", self.record)
