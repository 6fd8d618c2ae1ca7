"""stablenoise: diffusion noise selection and optimization by inversion stability.

Reference implementation of Qi, Bai, Xiong, Xie, "Not All Noises Are Created Equally: Diffusion
Noise Selection and Optimization" (arXiv 2407.14041).
"""

from .backends import from_pipeline, load
from .backends.base import Backend, Conditioning, Defaults
from .errors import StablenoiseError
from .generation import generate
from .noise import noise_from_seed, noises_from_seeds
from .optimization import OptimizationResult, optimize, paper_equivalent_lr
from .prompts import load_prompts
from .reward_optimization import RewardOptimizationResult, reward_optimize
from .rewards import Reward, load_reward
from .bank import SeedBank, build_bank
from .selection import Proxy, RewardScorer, SelectionResult, Stability, score_seeds, select
from .settings import OptimizerSettings
from .stability import cosine, round_trip, stability

__version__ = "0.1.0"
__all__ = ["Backend", "Conditioning", "Defaults", "OptimizationResult", "OptimizerSettings", "Proxy", "Reward",
           "RewardOptimizationResult", "RewardScorer", "SeedBank", "SelectionResult", "Stability", "StablenoiseError",
           "build_bank", "cosine", "from_pipeline", "generate", "load", "load_prompts", "load_reward",
           "noise_from_seed", "noises_from_seeds", "optimize", "paper_equivalent_lr", "reward_optimize", "round_trip",
           "score_seeds", "select", "stability"]
