"""The one optimizer-settings type, shared by stability optimization, reward optimization and the bench.

A bench method spec such as ``optimize:lr=18.75,preserve_norm=1`` or ``reno:shapes-clip=1,lr=2`` is parsed
into these settings over the method's own defaults; keys that are not settings are reward weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from .errors import StablenoiseError

_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


@dataclass(frozen=True)
class OptimizerSettings:
    iterations: int = 100
    lr: float = 100.0
    momentum: float = 0.5
    nesterov: bool = False
    preserve_norm: bool = False  # keep each iterate on the Gaussian shell (not in the paper)
    grad_clip: float = 0.0  # gradient-norm clipping; 0: none
    reg_weight: float = 0.0  # weight of the noise-norm regularizer (reward optimization)
    reward_weights: tuple[tuple[str, float], ...] = field(default=())  # (reward name, weight)

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)) or not 0 <= self.momentum < 1:
            raise StablenoiseError(f"optimizer settings need lr > 0 and 0 <= momentum < 1, got lr {self.lr:g}, "
                                   f"momentum {self.momentum:g}")
        if self.iterations < 0 or not (self.grad_clip >= 0 and self.reg_weight >= 0):
            raise StablenoiseError("optimizer settings need iterations, grad_clip and reg_weight >= 0")

    @classmethod
    def paper(cls) -> "OptimizerSettings":
        """Qi et al.: 100 iterations of SGD, lr 100, momentum 0.5, on 1 - stability."""
        return cls()

    @classmethod
    def reno(cls) -> "OptimizerSettings":
        """ReNO's published defaults (Eyring et al. 2024; see docs/reno.md): 50 iterations of SGD with
        Nesterov momentum 0.9, lr 5, gradient-norm clipping 0.1, noise-norm regularizer 0.01, and reward
        weights HPSv2.1 5, ImageReward 1, PickScore 0.05, CLIP 0.01 on ReNO's reward scales. ReNO's HPS term
        is 1 - cos, ours 100 * cos: its weight 5 is 0.05 here; the other three are on the same scale.
        ReNO scores 50 images (49 updates); ``iterations`` counts updates, as in ``optimize``."""
        return cls(iterations=49, lr=5.0, momentum=0.9, nesterov=True, grad_clip=0.1, reg_weight=0.01,
                   reward_weights=(("hpsv2.1", 0.05), ("imagereward", 1.0), ("pickscore", 0.05),
                                   ("clipscore", 0.01)))

    def changes(self, base: "OptimizerSettings") -> str:
        """The settings that differ from ``base``, as a spec (the empty string when none)."""
        out = []
        for f in fields(self):
            value, default = getattr(self, f.name), getattr(base, f.name)
            if value == default:
                continue
            if f.name == "reward_weights":
                out += [f"{name}={w:g}" for name, w in value]
            elif isinstance(value, bool):
                out.append(f"{f.name}={int(value)}")
            else:
                out.append(f"{f.name}={value:g}")
        return ",".join(out)

    @classmethod
    def parse(cls, spec: str, base: "OptimizerSettings | None" = None) -> "OptimizerSettings":
        """``"lr=18.75,preserve_norm=1"`` over ``base`` (default: the paper's). A key that is not a setting
        is a reward weight (``shapes-clip=1``); naming any reward weight replaces the base's weights."""
        base = base or cls.paper()
        names = {f.name for f in fields(cls)} - {"reward_weights"}
        values, weights = {}, []
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, sep, value = (x.strip() for x in item.partition("="))
            if not sep or not key or not value:
                raise StablenoiseError(f"bad optimizer setting {item!r} in {spec!r}: use KEY=VALUE")
            setting = key.replace("-", "_")
            try:
                if setting in ("nesterov", "preserve_norm"):
                    if value.lower() not in _FLAGS:
                        raise ValueError
                    values[setting] = _FLAGS[value.lower()]
                elif setting == "iterations":
                    values[setting] = int(value)
                elif setting in names:
                    values[setting] = float(value)
                else:
                    w = float(value)
                    if not math.isfinite(w):
                        raise ValueError
                    weights.append((key, w))
            except ValueError:
                raise StablenoiseError(f"bad optimizer setting {item!r} in {spec!r}") from None
            if setting in values and not math.isfinite(float(values[setting])):
                raise StablenoiseError(f"bad optimizer setting {item!r}: not finite")
        if weights:
            values["reward_weights"] = tuple(weights)
        return replace(base, **values)
