"""Fréchet distance between feature sets (Heusel et al. 2017), on pluggable image features."""
from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """FD = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2))."""
    covmean = linalg.sqrtm(cov1 @ cov2)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(len(cov1)) * 1e-6
        covmean = linalg.sqrtm((cov1 + offset) @ (cov2 + offset))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean))


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


def pixel_features(images: torch.Tensor, side: int = 8) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> area-averaged side x side pixels, (B, 3 side^2): a crude, model-free feature."""
    return torch.nn.functional.adaptive_avg_pool2d(images.float().cpu(), side).flatten(1).numpy()


def fd(images_a: torch.Tensor, images_b: torch.Tensor, features=pixel_features) -> float:
    return frechet_distance(*feature_stats(features(images_a)), *feature_stats(features(images_b)))


def patch_features(images: torch.Tensor, patch: int = 8) -> np.ndarray:
    """(B, 3, H, W) -> every non-overlapping patch x patch block at full resolution, (B H W / patch^2, 3 patch^2).

    A model-free feature that sees edges and texture at the images' own size (SinGAN's SIFID and super-resolution's
    patch statistics in the same spirit): a blurred upscale and a sharp one differ here, where a feature of the
    downsampled image (pixel_features, a 32 px CLIP) cannot tell them apart."""
    x = images.float().cpu()
    B, C, H, W = x.shape
    blocks = x.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, H/p, W/p, p, p)
    return blocks.permute(0, 2, 3, 1, 4, 5).reshape(-1, C * patch * patch).numpy()
