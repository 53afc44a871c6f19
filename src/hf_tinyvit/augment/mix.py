"""Mixup and CutMix between fixed partner pairs: who is paired with whom and how they mix are seeded
by (seed, epoch, pair), so a replay mixes the same pairs whatever the batches, processes or order."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from .recipe import AugmentationRecipe
from .sampling import seed_from

__all__ = ["MixParams", "mix_images", "mix_labels", "mix_partners", "pairing_order", "sample_mix"]


@dataclass(frozen=True)
class MixParams:
    """How a sample is mixed with its partner; both members of a pair share `mode`, `lam` and `box`."""

    partner: int
    mode: str  # "mixup" or "cutmix"
    lam: float  # weight of the sample's own image and label
    box: tuple[int, int, int, int] | None = field(default=None)  # cutmix: (top, left, h, w) taken from the partner


def pairing_order(recipe: AugmentationRecipe, seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """Sample ids in the epoch's pairing order: positions (0, 1), (2, 3), ... are Mixup/CutMix partners.

    Without mixing it is simply 0..n-1. A seeded permutation makes the pairs independent of
    batch composition, process count and sampler order; an odd last sample stays unmixed.
    """
    if not recipe.mixes:
        return np.arange(num_samples, dtype=np.int64)
    generator = torch.Generator().manual_seed(seed_from("pairs", int(seed), int(epoch)))
    return torch.randperm(num_samples, generator=generator).numpy().astype(np.int64)


def mix_partners(recipe: AugmentationRecipe, seed: int, epoch: int, num_samples: int) -> np.ndarray:
    """`partner[sample_id]`: the sample it is mixed with this epoch, or -1 when unpaired or not mixing."""
    partner = np.full(num_samples, -1, dtype=np.int64)
    if recipe.mixes:
        order = pairing_order(recipe, seed, epoch, num_samples)
        paired = num_samples - num_samples % 2
        partner[order[0:paired:2]] = order[1:paired:2]
        partner[order[1:paired:2]] = order[0:paired:2]
    return partner


def sample_mix(recipe: AugmentationRecipe, seed: int, epoch: int, sample_id: int, partner: int) -> MixParams | None:
    """Draw the Mixup/CutMix parameters of a pair, identical for both members; None = left unmixed."""
    if partner < 0 or not recipe.mixes:
        return None
    first, second = sorted((int(sample_id), int(partner)))
    # torch has no seeded Beta sampler; a numpy Generator is just as explicit and local.
    rng = np.random.Generator(np.random.PCG64(seed_from("mix", int(seed), int(epoch), first, second)))
    if rng.uniform() >= recipe.mixup_prob:
        return None
    if recipe.mixup_alpha > 0 and recipe.cutmix_alpha > 0:
        cutmix = rng.uniform() < recipe.switch_prob
    else:
        cutmix = recipe.cutmix_alpha > 0
    alpha = recipe.cutmix_alpha if cutmix else recipe.mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    if not cutmix:
        return MixParams(int(partner), "mixup", lam)
    size = recipe.image_size
    cut = int(size * math.sqrt(1.0 - lam))
    cy, cx = int(rng.integers(0, size)), int(rng.integers(0, size))
    top, bottom = max(cy - cut // 2, 0), min(cy + cut // 2, size)
    left, right = max(cx - cut // 2, 0), min(cx + cut // 2, size)
    # timm's correct_lam: the label weight is the area actually kept, after clipping the box
    lam = 1.0 - (bottom - top) * (right - left) / float(size * size)
    return MixParams(int(partner), "cutmix", lam, (top, left, bottom - top, right - left))


def mix_images(own: torch.Tensor, partner: torch.Tensor, mix: MixParams) -> torch.Tensor:
    if mix.mode == "mixup":
        return own * mix.lam + partner * (1.0 - mix.lam)
    top, left, h, w = mix.box
    mixed = own.clone()
    mixed[:, top : top + h, left : left + w] = partner[:, top : top + h, left : left + w]
    return mixed


def mix_labels(own: int, partner: int, mix: MixParams, num_labels: int) -> torch.Tensor:
    target = torch.zeros(num_labels, dtype=torch.float32)
    target[int(partner)] += 1.0 - mix.lam
    target[int(own)] += mix.lam
    return target

