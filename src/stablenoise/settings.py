"""The one optimizer-settings type, shared by stability optimization, reward optimization and the bench.

A bench method spec such as ``optimize:lr=18.75,preserve_norm=1`` or ``reno:shapes-clip=1,lr=2`` is parsed
into these settings over the method's own defaults; keys that are not settings are reward weights.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, fields, replace

from .errors import StablenoiseError

_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
_NONE = ("none", "off")  # grad_clip=none: no clipping


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


@dataclass(frozen=True)
class OptimizerSettings:
    """How :func:`stablenoise.optimization.descend` moves a noise: the one place that defines and checks them.

    Args:
        iterations: updates; iterations + 1 iterates are scored (0: score the start only).
        lr: the step size (> 0).
        momentum: heavy-ball momentum in [0, 1), as ``torch.optim.SGD``'s.
        nesterov: Nesterov momentum, as ``torch.optim.SGD(nesterov=True)``.
        preserve_norm: keep the start and every iterate on the Gaussian shell, norm sqrt(d) (not in the paper).
        grad_clip: clip each sample's gradient to this norm (> 0); None: no clipping.
        reg_weight: weight (>= 0) of the chi(d) noise-norm regularizer added to the loss (ReNO's).
        reward_weights: (reward name, weight) pairs a bench method optimizes; the library functions take the
            rewards themselves.
    """

    iterations: int = 100
    lr: float = 100.0
    momentum: float = 0.5
    nesterov: bool = False
    preserve_norm: bool = False
    grad_clip: float | None = None
    reg_weight: float = 0.0
    reward_weights: tuple[tuple[str, float], ...] = field(default=())

    def __post_init__(self):
        n = self.iterations
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise StablenoiseError(f"iterations must be an integer, got {n!r}")
        if not isinstance(self.nesterov, bool) or not isinstance(self.preserve_norm, bool):
            raise StablenoiseError("nesterov and preserve_norm must be True or False")
        if n < 0:
            raise StablenoiseError(f"iterations must be >= 0, got {n}")
        if not (_real(self.lr) and self.lr > 0 and math.isfinite(self.lr)) or not (
                _real(self.momentum) and 0 <= self.momentum < 1):
            raise StablenoiseError("need lr > 0 and 0 <= momentum < 1")
        if self.grad_clip is not None and not (_real(self.grad_clip) and 0 < self.grad_clip < math.inf):
            raise StablenoiseError(f"grad_clip must be > 0 (or None for no clipping), got {self.grad_clip!r}")
        if not (_real(self.reg_weight) and 0 <= self.reg_weight < math.inf):
            raise StablenoiseError(f"reg_weight must be >= 0, got {self.reg_weight!r}")
        if any(not (_real(w) and math.isfinite(w)) for _, w in self.reward_weights):
            raise StablenoiseError(f"reward weights must be finite numbers, got {self.reward_weights!r}")

    def override(self, **changes) -> "OptimizerSettings":
        """These settings with some changed, checked (a name that is not a setting is a TypeError, as for any
        unknown keyword argument).

        Args:
            **changes: settings by name (``lr=18.75``).

        Returns:
            The changed settings (these when nothing changes).
        """
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"unknown optimizer setting {unknown[0]!r}; settings: "
                            f"{', '.join(f.name for f in fields(self))}")
        return replace(self, **changes) if changes else self

    @classmethod
    def paper(cls) -> "OptimizerSettings":
        """Qi et al.: 100 iterations of SGD, lr 100, momentum 0.5, on 1 - stability.

        Returns:
            The paper's settings (the defaults of every field).
        """
        return cls()

    @classmethod
    def reno(cls) -> "OptimizerSettings":
        """ReNO's published defaults (Eyring et al. 2024; see docs/reno.md): 50 iterations of SGD with
        Nesterov momentum 0.9, lr 5, gradient-norm clipping 0.1, noise-norm regularizer 0.01, and reward
        weights HPSv2.1 5, ImageReward 1, PickScore 0.05, CLIP 0.01 on ReNO's reward scales. ReNO's HPS term
        is 1 - cos, ours 100 * cos: its weight 5 is 0.05 here; the other three are on the same scale.
        ReNO scores 50 images (49 updates); ``iterations`` counts updates, as everywhere.

        Returns:
            ReNO's settings.
        """
        return cls(iterations=49, lr=5.0, momentum=0.9, nesterov=True, grad_clip=0.1, reg_weight=0.01,
                   reward_weights=(("hpsv2.1", 0.05), ("imagereward", 1.0), ("pickscore", 0.05),
                                   ("clipscore", 0.01)))

    def changes(self, base: "OptimizerSettings") -> str:
        """The settings that differ from ``base``, as a spec (the empty string when none).

        Args:
            base: the settings to compare with.

        Returns:
            ``"KEY=VALUE,..."`` as :meth:`parse` reads it over ``base`` (booleans as 0/1, no clipping as ``none``,
            reward weights as ``NAME=WEIGHT``).
        """
        out = []
        for f in fields(self):
            value, default = getattr(self, f.name), getattr(base, f.name)
            if value == default:
                continue
            if f.name == "reward_weights":
                out += [f"{name}={w:g}" for name, w in value]
            elif isinstance(value, bool):
                out.append(f"{f.name}={int(value)}")
            elif value is None:
                out.append(f"{f.name}=none")
            else:
                out.append(f"{f.name}={value:g}")
        return ",".join(out)

    @classmethod
    def parse(cls, spec: str, base: "OptimizerSettings | None" = None) -> "OptimizerSettings":
        """``"lr=18.75,preserve_norm=1"`` over ``base`` (default: the paper's).

        A key that is not a setting is a reward weight (``shapes-clip=1``); naming any reward weight replaces the
        base's weights; ``grad_clip=none`` turns clipping off.

        Args:
            spec: comma-separated ``KEY=VALUE`` items (``-`` in a setting's name reads as ``_``; empty items skipped).
            base: the settings the spec changes (None: :meth:`paper`).

        Returns:
            The settings, checked.

        Raises:
            StablenoiseError: an item that is not ``KEY=VALUE``, a value of the wrong kind, or a setting out of
                range.
        """
        base = base or cls.paper()
        values, weights = {}, []
        for item in filter(None, (x.strip() for x in spec.split(","))):
            key, sep, value = (x.strip() for x in item.partition("="))
            if not sep or not key or not value:
                raise StablenoiseError(f"bad optimizer setting {item!r} in {spec!r}: use KEY=VALUE")
            setting = key.replace("-", "_")
            try:
                parsed = _value(setting, value)
            except ValueError:
                raise StablenoiseError(f"bad optimizer setting {item!r} in {spec!r}") from None
            if setting in _KINDS:
                values[setting] = parsed
            else:
                weights.append((key, parsed))
        if weights:
            values["reward_weights"] = tuple(weights)
        return replace(base, **values)


_KINDS = {f.name: f.type for f in fields(OptimizerSettings) if f.name != "reward_weights"}


def _value(setting: str, text: str):
    """A setting's value from its text (a reward weight's when ``setting`` is no setting); ValueError if bad."""
    kind = _KINDS.get(setting, "float")
    if kind == "bool":
        if text.lower() not in _FLAGS:
            raise ValueError(text)
        return _FLAGS[text.lower()]
    if kind == "int":
        return int(text)
    if kind.endswith("None") and text.lower() in _NONE:
        return None
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value
