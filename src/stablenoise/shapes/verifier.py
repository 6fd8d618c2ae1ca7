"""Exact verifier for the shapes world: what objects an image holds, and whether a caption is met.

Detection is classical: each pixel goes to the nearest palette colour (or to the background when
nothing is near), same-colour pixels form 4-connected components, and a component's shape is read
from how much of its bounding box it fills and whether it is wider at the bottom than at the top.

Per-tag semantics follow GenEval's evaluator (``evaluate_images.py``):
- single_object / two_object: at least one object of each named shape, any colour.
- counting: exactly N objects of the named colour and shape.
- colors: at least one object of the named shape in the named colour.
- position: some object A and some object B (each of its named colour and shape) for which GenEval's
  ``relative_position`` (centre offset less 0.1 of the summed box sizes) includes the relation.
- color_attr: an object of each named (colour, shape).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..errors import StablenoiseError
from .world import COLORS, NUMBERS, RELATIONS, SHAPES, BACKGROUND, plural, relative_position

MIN_AREA = 12  # px; smaller components are sampling noise, not objects (the smallest object is 38 px)
MAX_COLOR_DISTANCE = 90.0  # RGB distance within which a pixel counts as a palette colour


@dataclass(frozen=True)
class Detection:
    shape: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)
    area: int


@dataclass(frozen=True)
class Requirement:
    tag: str
    objects: tuple[tuple[str | None, str], ...]  # (color or None, shape)
    count: int | None = None  # counting: exact number
    relation: str | None = None  # position: relation of objects[0] to objects[1]


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    detections: tuple[Detection, ...]


_COLOR = "|".join(COLORS)
_SHAPE = "|".join(SHAPES)
_PLURAL = "|".join(plural(s) for s in SHAPES)
_NUMBER = "|".join(NUMBERS.values())
_REL = "|".join(RELATIONS)
_PATTERNS = [
    ("position", re.compile(rf"a ({_COLOR}) ({_SHAPE}) ({_REL}) a ({_COLOR}) ({_SHAPE})")),
    ("color_attr", re.compile(rf"a ({_COLOR}) ({_SHAPE}) and a ({_COLOR}) ({_SHAPE})")),
    ("two_object", re.compile(rf"a ({_SHAPE}) and a ({_SHAPE})")),
    ("counting", re.compile(rf"({_NUMBER}) ({_COLOR}) ({_PLURAL})")),
    ("colors", re.compile(rf"a ({_COLOR}) ({_SHAPE})")),
    ("single_object", re.compile(rf"a ({_SHAPE})")),
]


def parse(caption: str) -> Requirement:
    """The requirement a shapes-world caption states; StablenoiseError (a ValueError) if it is not one."""
    text = " ".join(caption.lower().split())
    for tag, pattern in _PATTERNS:
        m = pattern.fullmatch(text)
        if not m:
            continue
        g = m.groups()
        if tag == "position":
            return Requirement(tag, ((g[0], g[1]), (g[3], g[4])), relation=g[2])
        if tag == "color_attr":
            return Requirement(tag, ((g[0], g[1]), (g[2], g[3])))
        if tag == "two_object":
            return Requirement(tag, ((None, g[0]), (None, g[1])))
        if tag == "counting":
            n = {v: k for k, v in NUMBERS.items()}[g[0]]
            return Requirement(tag, ((g[1], g[2][:-1]),), count=n)
        if tag == "colors":
            return Requirement(tag, ((g[0], g[1]),))
        return Requirement(tag, ((None, g[0]),))
    raise StablenoiseError(f"not a shapes-world caption: {caption!r} (the verifier reads e.g. 'a red circle', "
                           "'three blue squares', 'a red circle left of a blue square')")


def _classify_shape(mask: np.ndarray) -> str:
    h, w = mask.shape
    fill = mask.sum() / (h * w)
    rows = mask.sum(axis=1)
    k = max(1, h // 4)
    top, bottom = rows[:k].mean(), rows[-k:].mean()
    if fill >= 0.9:
        return "square"
    if top < 0.6 * bottom and fill < 0.72:
        return "triangle"
    return "circle"


def detect(image) -> tuple[Detection, ...]:
    """Objects in an RGB image (PIL image or uint8 array [H, W, 3])."""
    img = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
    names = list(COLORS)
    palette = np.array([BACKGROUND] + [COLORS[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(img[:, :, None, :] - palette[None, None], axis=-1)
    label = dist.argmin(-1)
    label[dist.min(-1) > MAX_COLOR_DISTANCE] = 0
    found = []
    for ci, name in enumerate(names, start=1):
        comps, n = ndimage.label(label == ci)
        for sl in ndimage.find_objects(comps):
            piece = comps[sl] > 0
            area = int(piece.sum())
            if area < MIN_AREA:
                continue
            box = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
            found.append(Detection(_classify_shape(piece), name, box, area))
    return tuple(sorted(found, key=lambda d: (d.box[1], d.box[0])))


def _matches(d: Detection, color: str | None, shape: str) -> bool:
    return d.shape == shape and (color is None or d.color == color)


def check(req: Requirement, detections: tuple[Detection, ...]) -> tuple[bool, str]:
    if req.tag == "counting":
        (color, shape), = req.objects
        n = sum(_matches(d, color, shape) for d in detections)
        return n == req.count, f"expected {req.count} {color} {shape}, found {n}"
    for color, shape in req.objects:
        if not any(_matches(d, color, shape) for d in detections):
            return False, f"no {color or ''} {shape}".replace("  ", " ")
    if req.tag == "position":
        (ca, sa), (cb, sb) = req.objects
        for a in (d for d in detections if _matches(d, ca, sa)):
            for b in (d for d in detections if _matches(d, cb, sb) and d is not a):
                if req.relation in relative_position(a.box, b.box):
                    return True, "ok"
        return False, f"no pair with {sa} {req.relation} {sb}"
    return True, "ok"


def verify(image, caption: str) -> Verdict:
    """Does ``image`` show what ``caption`` says? GenEval semantics per tag (see module doc)."""
    detections = detect(image)
    passed, reason = check(parse(caption), detections)
    return Verdict(passed, reason, detections)


def agreement(n_per_tag: int = 2000, seed: int = 0, split: str = "heldout") -> dict[str, dict]:
    """Verifier vs ground truth on freshly rendered images, per tag: the caption passes, and the detected
    (shape, colour) multiset equals the rendered one."""
    import numpy as np

    from . import world

    rng = np.random.default_rng(seed)
    out = {}
    for tag in world.TAGS:
        caption_ok = objects_ok = 0
        for _ in range(n_per_tag):
            s = world.sample(rng, split, tag=tag)
            v = verify(s.image, s.caption)
            caption_ok += v.passed
            objects_ok += sorted((d.shape, d.color) for d in v.detections) == sorted(
                (o.shape, o.color) for o in s.objects)
        out[tag] = {"n": n_per_tag, "caption_pass": caption_ok / n_per_tag, "objects_exact": objects_ok / n_per_tag}
    return out


if __name__ == "__main__":  # python -m stablenoise.shapes.verifier [N_PER_TAG]
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print("| tag | images | caption passes | objects detected exactly |\n|---|---|---|---|")
    for split in ("train", "heldout"):
        for tag, r in agreement(n, seed=1 if split == "train" else 2, split=split).items():
            print(f"| {tag} ({split}) | {r['n']} | {100 * r['caption_pass']:.2f}% | {100 * r['objects_exact']:.2f}% |")
