"""The shapes world: a seeded procedural generator of (caption, image, ground truth).

Flat-coloured circles, squares and triangles on a dark background at 32x32 pixels. 32x32 is the
largest size at which a text-conditional UNet trains to usable quality in about an hour on two CPU
cores, and still large enough (objects 7-12 px) for shapes to be told apart by classical analysis.

Captions follow GenEval's six tags (single_object, two_object, counting, colors, position,
color_attr). Every caption is a *combination* (a tuple of attributes); per tag a fixed 20% of the
combinations is held out of training (see :func:`split_of`), so evaluation can use captions whose
attribute combination the model never saw.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

RESOLUTION = 32
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (230, 210, 40),
    "white": (235, 235, 235),
}
BACKGROUND = (30, 30, 30)
NUMBERS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# Training mixture: the compositional tags get more weight because they are harder.
TAG_WEIGHTS = {"single_object": 1.0, "two_object": 1.0, "counting": 1.5, "colors": 1.0,
               "position": 2.0, "color_attr": 1.5}
MIN_SIZE, MAX_SIZE = 7, 12
HELDOUT_FRACTION = 0.2


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    x: int  # top-left column of the bounding box
    y: int  # top-left row
    size: int

    @property
    def center(self) -> tuple[float, float]:
        return (self.x + self.size / 2, self.y + self.size / 2)

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.x + self.size, self.y + self.size)


@dataclass(frozen=True)
class Sample:
    caption: str
    tag: str
    objects: tuple[Obj, ...]
    image: np.ndarray  # uint8 [H, W, 3]


# ---------------------------------------------------------------- captions and combinations

def plural(shape: str) -> str:
    return shape + "s"


def caption_of(tag: str, combo: tuple) -> str:
    if tag == "single_object":
        return f"a {combo[0]}"
    if tag == "two_object":
        return f"a {combo[0]} and a {combo[1]}"
    if tag == "counting":
        n, color, shape = combo
        return f"{NUMBERS[n]} {color} {plural(shape)}"
    if tag == "colors":
        return f"a {combo[0]} {combo[1]}"
    if tag == "position":
        (ca, sa), rel, (cb, sb) = combo
        return f"a {ca} {sa} {rel} a {cb} {sb}"
    if tag == "color_attr":
        (ca, sa), (cb, sb) = combo
        return f"a {ca} {sa} and a {cb} {sb}"
    raise ValueError(f"unknown tag {tag!r}")


def combinations(tag: str) -> list[tuple]:
    """Every attribute combination of a tag, in a fixed order."""
    pairs = [(c, s) for s in SHAPES for c in COLORS]
    if tag == "single_object":
        return [(s,) for s in SHAPES]
    if tag == "two_object":
        return [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
    if tag == "counting":
        return [(n, c, s) for n in NUMBERS for c in COLORS for s in SHAPES]
    if tag == "colors":
        return pairs
    if tag == "position":
        return [(a, r, b) for a in pairs for r in RELATIONS for b in pairs if a != b]
    if tag == "color_attr":
        return [(a, b) for a in pairs for b in pairs if a[1] != b[1] and a[0] != b[0]]
    raise ValueError(f"unknown tag {tag!r}")


def _rank_key(tag: str, combo: tuple) -> str:
    return hashlib.sha256(f"{tag}|{caption_of(tag, combo)}".encode()).hexdigest()


def heldout_combinations(tag: str) -> set[tuple]:
    """The fixed 20% (at least one) of a tag's combinations never shown in training."""
    combos = sorted(combinations(tag), key=lambda c: _rank_key(tag, c))
    n = max(1, round(HELDOUT_FRACTION * len(combos)))
    return set(combos[:n])


_HELDOUT = {tag: heldout_combinations(tag) for tag in TAGS}


def split_of(tag: str, combo: tuple) -> str:
    return "heldout" if combo in _HELDOUT[tag] else "train"


def sample_combo(rng: np.random.Generator, tag: str, split: str = "train") -> tuple:
    pool = [c for c in combinations(tag) if split_of(tag, c) == split]
    return pool[rng.integers(len(pool))]


def sample_tag(rng: np.random.Generator, weights: dict[str, float] | None = None) -> str:
    weights = weights or TAG_WEIGHTS
    tags = list(weights)
    p = np.array([weights[t] for t in tags], dtype=float)
    return tags[rng.choice(len(tags), p=p / p.sum())]


# ---------------------------------------------------------------- rendering

def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean [size, size] footprint of a shape in its bounding box (no anti-aliasing)."""
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        r = size / 2
        return (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(xx - size / 2) <= yy / 2
    raise ValueError(f"unknown shape {shape!r}")


def render(objects: tuple[Obj, ...], resolution: int = RESOLUTION) -> np.ndarray:
    img = np.empty((resolution, resolution, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    for o in objects:
        m = shape_mask(o.shape, o.size)
        img[o.y:o.y + o.size, o.x:o.x + o.size][m] = COLORS[o.color]
    return img


def relative_position(a: tuple, b: tuple, threshold: float = 0.1) -> set[str]:
    """GenEval's relation test between two boxes (x0, y0, x1, y1): the set of relations a has to b."""
    boxes = np.array([a, b], dtype=float).reshape(2, 2, 2)
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    rel = set()
    if dx < -0.5:
        rel.add("left of")
    if dx > 0.5:
        rel.add("right of")
    if dy < -0.5:
        rel.add("above")
    if dy > 0.5:
        rel.add("below")
    return rel


def _place(rng, specs, resolution, relation=None, tries=200):
    """Place (shape, color) specs one by one at random sizes and positions, never touching (gap >= 2 px)."""
    max_size = MAX_SIZE if len(specs) <= 2 else MAX_SIZE - 2  # four 12 px objects rarely fit
    for _ in range(tries):
        objs: list[Obj] = []
        for shape, color in specs:
            for _ in range(100):
                size = int(rng.integers(MIN_SIZE, max_size + 1))
                o = Obj(shape, color, int(rng.integers(0, resolution - size + 1)),
                        int(rng.integers(0, resolution - size + 1)), size)
                if not any(_too_close(o, p) for p in objs):
                    objs.append(o)
                    break
            else:
                break
        if len(objs) < len(specs):
            continue
        # A clear margin over GenEval's test so that rendered ground truth is never borderline.
        if relation is not None and relation not in relative_position(objs[0].box, objs[1].box, 0.2):
            continue
        return tuple(objs)
    raise RuntimeError("could not place objects")  # pragma: no cover


def _too_close(p: Obj, q: Obj, gap: int = 2) -> bool:
    return not (p.x + p.size + gap <= q.x or q.x + q.size + gap <= p.x
                or p.y + p.size + gap <= q.y or q.y + q.size + gap <= p.y)


def objects_for(rng: np.random.Generator, tag: str, combo: tuple,
                resolution: int = RESOLUTION) -> tuple[Obj, ...]:
    """Random objects that make the caption of (tag, combo) true, and nothing else in the image."""
    colors = list(COLORS)

    def any_color():
        return colors[rng.integers(len(colors))]

    if tag == "single_object":
        return _place(rng, [(combo[0], any_color())], resolution)
    if tag == "two_object":
        return _place(rng, [(combo[0], any_color()), (combo[1], any_color())], resolution)
    if tag == "counting":
        n, color, shape = combo
        return _place(rng, [(shape, color)] * n, resolution)
    if tag == "colors":
        return _place(rng, [(combo[1], combo[0])], resolution)
    if tag == "position":
        (ca, sa), rel, (cb, sb) = combo
        return _place(rng, [(sa, ca), (sb, cb)], resolution, relation=rel)
    if tag == "color_attr":
        (ca, sa), (cb, sb) = combo
        return _place(rng, [(sa, ca), (sb, cb)], resolution)
    raise ValueError(f"unknown tag {tag!r}")


def sample(rng: np.random.Generator, split: str = "train", tag: str | None = None,
           resolution: int = RESOLUTION) -> Sample:
    tag = tag or sample_tag(rng)
    combo = sample_combo(rng, tag, split)
    objs = objects_for(rng, tag, combo, resolution)
    return Sample(caption_of(tag, combo), tag, objs, render(objs, resolution))


def prompts(n: int, seed: int = 0, split: str = "heldout") -> list[tuple[str, str]]:
    """n (caption, tag) pairs, tags balanced round-robin, combinations drawn at random from the split."""
    rng = np.random.default_rng(seed)
    return [(caption_of(tag, c), tag) for tag, c in
            ((TAGS[i % len(TAGS)], sample_combo(rng, TAGS[i % len(TAGS)], split)) for i in range(n))]


def vocabulary() -> list[str]:
    """Every word a caption of this world can contain."""
    words = {"a", "and", "of"} | set(SHAPES) | {plural(s) for s in SHAPES} | set(COLORS)
    words |= set(NUMBERS.values())
    for r in RELATIONS:
        words |= set(r.split())
    return sorted(words)
