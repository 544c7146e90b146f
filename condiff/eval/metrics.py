"""Sample-quality metrics on feature vectors: KID, improved precision/recall, and CLIP features to compute them on.

FD lives in fd.py. Every function takes features (N, D) as numpy arrays, so any feature extractor plugs in:
condiff CLIP's image tower (the default), 8x8 pixels, or Inception from a local weights file (inception.py).
"""
from __future__ import annotations

import numpy as np
import torch

from ..nets.clip import clip_score


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel (Binkowski et al. 2018): k(x, y) = (x.y / d + 1)^3."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean k(x_i, y_j)."""
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the unbiased MMD^2 over random subsets (as torch-fidelity)."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(real), len(fake))
    values = [mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                            fake[rng.choice(len(fake), size, replace=False)]) for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)), in float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    sq = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(sq, 0))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    d = pairwise_distances(features, features)
    return np.partition(d, k, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019).

    precision = share of fake samples inside some real k-NN ball; recall = share of real samples inside some fake ball.
    """
    d = pairwise_distances(real, fake)  # (R, F)
    precision = (d < knn_radii(real, k)[:, None]).any(axis=0).mean()
    recall = (d < knn_radii(fake, k)[None, :]).any(axis=1).mean()
    return float(precision), float(recall)


@torch.no_grad()
def clip_image_features(clip, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Unit-norm condiff CLIP image embeddings (N, D) of images in [-1, 1] at any size, area-resized to the CLIP's
    resolution (clean tower; t = 0 if noise-aware)."""
    import torch.nn.functional as F

    out, side = [], clip.cfg.image.resolution
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(clip.device, torch.float32)
        if x.shape[-1] != side:  # e.g. a 64 px model judged by the 32 px clip32
            x = F.interpolate(x, size=(side, side), mode="area")
        t = torch.zeros(len(x), device=x.device) if clip.noise_aware else None
        out.append(clip.encode_image(x, t).cpu())
    return torch.cat(out).numpy().astype(np.float64)


def clip_metric_features(clip, images: torch.Tensor) -> np.ndarray:
    """FD/KID/precision-recall features: unit-norm CLIP embeddings x sqrt(D), coordinates of unit scale, as KID's
    kernel (x.y / d + 1)^3 expects."""
    return clip_image_features(clip, images) * clip.cfg.embed_dim ** 0.5


@torch.no_grad()
def clip_scores(clip, images: torch.Tensor, prompts: list[str], batch_size: int = 256) -> np.ndarray:
    """CLIPScore (Hessel et al.) of each (image, prompt) pair with condiff CLIP: 100 max(cos, 0)."""
    img = torch.from_numpy(clip_image_features(clip, images, batch_size)).float()
    txt = torch.cat([clip.encode_text(prompts[i:i + batch_size]).cpu() for i in range(0, len(prompts), batch_size)])
    return clip_score(img, txt).numpy()
