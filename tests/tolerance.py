"""Tolerances of near-exact comparisons, derived from floating-point rounding instead of tuned on one CPU.

Another CPU (or ``ATEN_CPU_CAPABILITY=default|avx2|avx512``, or another thread count) sums float32 terms in
another order, so two correct float32 computations of the same quantity differ by rounding alone. For a
reduction of n terms the probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 2019) is
|error| <= lam * sqrt(n) * u * sum|terms|, holding with probability >= 1 - 2 exp(-lam**2 / 2) for each
reduction; lam = 4 makes a failure by rounding alone a 1-in-1,500 event per reduction, yet keeps the
tolerance orders of magnitude below what a real bug moves (a wrong crop offset, timestep or argument order).
A tolerance here is written at the call site as ``f32(n, scale)``: n the longest reduction that feeds the
compared value, scale the size of the summed terms (for a cosine of unit vectors, 1; for a score, the
factor it is multiplied by).
"""

import math

U32 = 2.0 ** -24  # float32 unit roundoff
U64 = 2.0 ** -53  # float64 unit roundoff
LAM = 4.0


def f32(n: int, scale: float = 1.0) -> float:
    """Rounding bound of a float32 reduction of length n over terms of total size ``scale``."""
    return LAM * math.sqrt(n) * U32 * scale


def f64(n: int, scale: float = 1.0) -> float:
    """The same bound in float64 (where a comparison is made in double precision)."""
    return LAM * math.sqrt(n) * U64 * scale


# The longest reduction in one forward pass of each test model (the n of its rounding bound): the widest of its
# latent size d (what a cosine sums over), its GroupNorms (channels per group x H x W) and its convolutions
# (in_channels x 3 x 3) and attentions.
TOY = 2 * 4 * 4  # ToyBackend: float64 inside, one float32 cosine over d = 32
TINY_SD = 6 * 16 * 16  # the last up block's GroupNorm over 48 / 8 channels at 16x16 (d = 1024, convs <= 576)
SHAPES = 6 * 32 * 32  # the shapes UNet's last up block: GroupNorm over 96 / 16 channels at 32x32 (d = 3072)
TINY_FLOW = 4 * 16 * 16  # tiny SD3 / FLUX: d = 1024; their transformers are 32 wide (MLPs 128, 64 tokens)
TINY_SHAP_E = 32 * 16  # tiny Shap-E prior: d = 512; the transformer is 16 wide (MLP 64)


def round_trip_n(n: int, steps: int) -> int:
    """A steps-step round trip chains 2 * steps model calls: their rounding errors add, so n grows that much."""
    return n * 2 * steps


def cfg(guidance: float) -> float:
    """Classifier-free guidance u + g (c - u) scales its branches' rounding by |1 - g| + |g| (1 without CFG)."""
    return max(1.0, abs(1.0 - guidance) + abs(guidance))
