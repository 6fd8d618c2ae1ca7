"""The Denoiser in k-diffusion's sense (``k_diffusion/external.py``): a network wrapped into a function of
(x, its level, the level to evaluate at) -> (x0, eps), what the one integrator steps with (:mod:`stablenoise.ddim`).

One object does the network call, classifier-free guidance, optional gradient checkpointing and the counting of
network evaluations, and reads the raw output (noise, v, x0, or a flow model's velocity) as the clean-sample and
noise predictions (:func:`stablenoise.ddim.predict`). Also here: the conditioning it feeds the network, one pytree
of keyword arguments per CFG branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from .. import ddim
from ..errors import StablenoiseError


@dataclass
class Conditioning:
    """Network keyword arguments for a batch: the conditional branch, and the unconditional one for CFG."""

    cond: dict[str, Any]
    uncond: dict[str, Any] | None = None

    @property
    def batch_size(self) -> int:
        """The number of rows: the first dimension of the conditional branch's first tensor."""
        return first_dim(self.cond)

    def expand(self, n: int) -> "Conditioning":
        """Repeat a batch-1 conditioning to n samples (one prompt for a whole batch of noises).

        Args:
            n: the batch size wanted.

        Returns:
            This conditioning when it has n rows already, else its one row expanded (a view, not a copy) to n.

        Raises:
            StablenoiseError: a conditioning of more than one row, but not n.
        """
        if self.batch_size == n:
            return self
        if self.batch_size != 1:
            raise StablenoiseError(f"cannot expand a conditioning of {self.batch_size} prompts to {n}")
        return Conditioning(map_tree(self.cond, lambda t: t.expand(n, *t.shape[1:])),
                            None if self.uncond is None else map_tree(self.uncond, lambda t: t.expand(n, *t.shape[1:])))

    def select(self, index: Sequence[int]) -> "Conditioning":
        """The conditioning of the samples at ``index`` (in that order).

        Args:
            index: row positions.

        Returns:
            This conditioning when ``index`` is every row in order, else those rows.
        """
        if list(index) == list(range(self.batch_size)):
            return self
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return Conditioning(map_tree(self.cond, lambda t: t[idx.to(t.device)]),
                            None if self.uncond is None else map_tree(self.uncond, lambda t: t[idx.to(t.device)]))


def map_tree(tree, fn):
    """``fn`` on every tensor of a nested dict (other leaves kept)."""
    if isinstance(tree, dict):
        return {k: map_tree(v, fn) for k, v in tree.items()}
    return fn(tree) if isinstance(tree, torch.Tensor) else tree


def concat(a, b):
    """Two trees of one structure, their tensors concatenated along the batch (other leaves from ``a``)."""
    if isinstance(a, dict):
        return {k: concat(a[k], b[k]) for k in a}
    return torch.cat([a, b]) if isinstance(a, torch.Tensor) else a


def first_dim(tree) -> int:
    """The batch size of a tree: the first dimension of its first tensor."""
    for v in tree.values():
        n = first_dim(v) if isinstance(v, dict) else (v.shape[0] if isinstance(v, torch.Tensor) else None)
        if n is not None:
            return n
    raise StablenoiseError("conditioning holds no tensor")


def uses_cfg(guidance: float) -> bool:
    """diffusers' convention: classifier-free guidance only above 1; otherwise the conditional branch alone."""
    return guidance > 1.0


Checkpoint = Callable[..., torch.Tensor]  # torch.utils.checkpoint.checkpoint's signature


@dataclass
class Denoiser:
    """A network as (x, here, at) -> (x0, eps): evaluated at ``at``'s timestep, for x at level ``here``.

    ``call`` is one network evaluation of a batch, (x, t, network kwargs, guidance) -> raw output, the adapter's.
    ``checkpoint``: True recomputes each call in the backward pass (memory holds its inputs, not its activations);
    a function with ``torch.utils.checkpoint.checkpoint``'s signature does the same its own way (to observe what a
    checkpoint keeps, say). ``count`` is told each call's evaluations (one per sample, two under CFG).
    """

    call: Callable[[torch.Tensor, torch.Tensor, dict, float], torch.Tensor]
    cond: Conditioning
    guidance: float
    prediction_type: str = "epsilon"  # or v_prediction, sample, flow (see ddim.predict)
    clip: float | None = None
    cfg: bool = False  # combine both branches (the family's rule at this guidance)
    dtype: torch.dtype = torch.float32  # the network's: inputs are cast to it
    work_dtype: torch.dtype = torch.float32  # the integrator's: outputs come back in it
    checkpoint: bool | Checkpoint = False
    count: Callable[[int], None] | None = None

    def __call__(self, x: torch.Tensor, here: ddim.Level, at: ddim.Level) -> tuple[torch.Tensor, torch.Tensor]:
        return ddim.predict(self.output(x, at.t), x, here, at, self.prediction_type, self.clip)

    def output(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The network's raw output at (x, t), guided, in the work dtype (checkpointed when gradients are on)."""
        if self.checkpoint and torch.is_grad_enabled():
            run = torch_checkpoint if self.checkpoint is True else self.checkpoint
            return run(self.guided, x, t, self.cond, self.guidance, use_reentrant=False)
        return self.guided(x, t, self.cond, self.guidance)

    def guided(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance: float) -> torch.Tensor:
        """One evaluation: with CFG both branches in one batch, u + guidance (c - u); else the conditional one."""
        x = x.to(self.dtype)
        if self.count is not None:
            self.count(x.shape[0] * (2 if self.cfg else 1))
        if not self.cfg:
            return self.call(x, t, cond.cond, guidance).to(self.work_dtype)
        if cond.uncond is None:
            raise StablenoiseError("guidance > 1 needs a conditioning encoded with guidance > 1")
        u, c = self.call(torch.cat([x, x]), t, concat(cond.uncond, cond.cond), guidance).chunk(2)
        return (u + guidance * (c - u)).to(self.work_dtype)
