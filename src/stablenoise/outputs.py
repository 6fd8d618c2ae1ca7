"""Reading prompt files and writing run folders: images, noises and the JSON record of a run."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw
from safetensors.torch import save_file

from .distributed import hold
from .errors import StablenoiseError
from .records import now, strict_json, versions, write_json_atomic

def read_prompts(path: str | Path) -> list[str]:
    """The prompts of a prompt file (.txt, .csv, .tsv or .jsonl; see :mod:`stablenoise.prompts`)."""
    from .prompts import read_prompt_file

    return read_prompt_file(path).texts


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
    """One run's output folder: an item folder per prompt and a ``run.json`` with every parameter.

    Each item is written to a temporary folder and renamed into place when complete; ``run.json`` is
    rewritten atomically after each item, so an interrupted run keeps everything it finished and nothing
    half-written. A rerun into the same folder with the same command, parameters and model resumes: finished
    items are skipped (``done``). Any other non-empty folder is refused, and nothing is ever deleted that this
    class did not write. Used as a context manager, the run ends with a final status: ``done``,
    ``interrupted`` or ``failed: why``. Until then this process holds the folder itself (a ``flock``, which the
    kernel frees if the process dies; no file is left), so a second run into the folder meanwhile is refused,
    not mixed in.
    """

    def __init__(self, out: str | Path, command: str, parameters: dict, model: dict):
        self.root = Path(out)
        record = {"command": command, "created": now(), "status": "running",
                  "parameters": strict_json(parameters), "model": strict_json(model), "versions": versions(),
                  "items": []}
        if self.root.exists() and not self.root.is_dir():
            raise StablenoiseError(f"output folder {self.root} is a file")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StablenoiseError(f"cannot write to output folder {self.root}: {e.strerror or e}") from None
        # held until the run ends (or its process dies): a second run into this folder is refused in one line
        self._lock = hold(self.root, f"another run is writing to {self.root}: wait for it to finish, "
                                     "or use another --out")
        try:
            old = self._previous_run()
            if old is not None:
                self._check_same_run(old, record)
                record = {**old, "status": "running", "resumed": [*old.get("resumed", []), now()]}
            elif any(self.root.iterdir()):
                raise StablenoiseError(f"output folder {self.root} is not empty and holds no stablenoise run: "
                                       "use another --out")
            self.record = record
            self.flush()
        except BaseException as e:
            self._release()
            if isinstance(e, OSError):
                raise StablenoiseError(f"cannot write to output folder {self.root}: {e.strerror or e}") from None
            raise

    def _previous_run(self) -> dict | None:
        path = self.root / "run.json"
        if not path.exists():
            return None
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            old = None
        if not isinstance(old, dict) or not {"command", "parameters", "items"} <= set(old):
            raise StablenoiseError(f"{path} is not a stablenoise run record: use another --out")
        return old

    def _check_same_run(self, old: dict, new: dict) -> None:
        for key in ("command", "parameters", "model"):
            if old.get(key) != new[key]:
                what = key
                if isinstance(new[key], dict) and isinstance(old.get(key), dict):
                    diff = sorted(k for k in set(new[key]) | set(old[key]) if new[key].get(k) != old[key].get(k))
                    what = f"{key} ({', '.join(diff)})"
                raise StablenoiseError(f"output folder {self.root} holds a run with other {what}: use another "
                                       "--out, or the same settings to resume it")

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("interrupted")
        else:
            self.finish(f"failed: {str(exc).splitlines()[0] if str(exc) else exc_type.__name__}")

    def item_dir(self, index: int, prompt: str) -> Path:
        return self.root / f"{index:03d}-{slug(prompt)}"

    def done(self, index: int, prompt: str) -> bool:
        """Whether a previous run into this folder finished this item (it is then skipped)."""
        return any(it.get("index") == index and it.get("prompt") == prompt and
                   (self.root / it.get("folder", "")).is_dir() for it in self.record["items"])

    def add(self, index: int, prompt: str, record: dict, images: dict[str, Image.Image] | None = None,
            tensors: dict | None = None) -> Path:
        final = self.item_dir(index, prompt)
        if final.exists():
            raise StablenoiseError(f"{final} exists but is not in this run's record: move it away and rerun")
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{final.name}.", suffix=".partial"))
        try:
            for name, image in (images or {}).items():
                image.save(tmp / f"{name}.png")
            if tensors:
                save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / "noise.safetensors"))
            record = {"index": index, "prompt": prompt, "folder": final.name, **record}
            write_json_atomic(tmp / "record.json", record)
            tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; give it a plain mkdir's mode
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own temporary folder, nothing else
            raise
        self.record["items"].append(strict_json(record))
        self.flush()
        return final

    def adopt(self) -> int:
        """Record the item folders that are whole but not in ``run.json``: those a rank of a launched run wrote
        (rank 0 alone keeps ``run.json``), or finished before the job was killed. An item folder appears whole
        or not at all (renamed into place), so one whose ``record.json`` names this run's prompt at its index is
        adopted, not redone; any other folder is left alone. Items are kept in prompt order.

        Returns:
            How many items were adopted.
        """
        known = {it.get("folder") for it in self.record["items"]}
        prompts = self.record["parameters"].get("prompts") or []
        found = []
        for d in sorted(self.root.iterdir()):
            if d.name in known or d.name.startswith(".") or not d.is_dir():
                continue
            item = _item_record(d / "record.json")
            i = item.get("index") if item else None
            if isinstance(i, int) and 0 <= i < len(prompts) and item.get("prompt") == prompts[i] and \
                    item.get("folder") == d.name == self.item_dir(i, prompts[i]).name:
                found.append(strict_json(item))
        if found:
            self.record["items"] = sorted(self.record["items"] + found, key=lambda it: it.get("index", -1))
            self.flush()
        return len(found)

    def finish(self, status: str = "done", **extra) -> None:
        """Record the run's final status and let another run into the folder."""
        self.record.update(status=status, finished=now(), **extra)
        try:
            self.flush()
        finally:
            self._release()

    def _release(self) -> None:
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.close()

    def flush(self) -> None:
        write_json_atomic(self.root / "run.json", self.record)


class RankItems(RunFolder):
    """A launched run's folder on a rank other than 0: it writes its finished items' folders (as
    :meth:`RunFolder.add`, whole or not at all) and never ``run.json``, which rank 0 alone keeps."""

    def __init__(self, out: str | Path, items: list[dict]):
        self.root, self.record = Path(out), {"items": list(items)}

    def flush(self) -> None:
        pass  # run.json is rank 0's: it adopts this rank's item folders


def _item_record(path: Path) -> dict | None:
    try:
        item = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return item if isinstance(item, dict) else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
