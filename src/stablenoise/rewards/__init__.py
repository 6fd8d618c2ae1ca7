"""Rewards for images and prompts behind one interface: ``load_reward(name)(images, prompts) -> [B]``.

Built in: ``hpsv2``, ``hpsv2.1``, ``pickscore``, ``imagereward``, ``aesthetic``, ``clipscore`` and
``clipscore-views`` (its mean over the views of a 3D turntable strip); the shapes world
adds ``shapes-verifier`` and ``shapes-clip`` through the ``stablenoise.rewards`` entry-point group.
"""

from .base import Reward
from .registry import available, load_reward, register

__all__ = ["Reward", "available", "load_reward", "register"]
