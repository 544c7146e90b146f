import numpy as np
import pytest
import torch

from condiff.eval.fd import fd, feature_stats, frechet_distance, pixel_features


def test_frechet_distance_closed_forms():
    mu, cov = np.zeros(3), np.diag([1.0, 2.0, 3.0])
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mu, cov, mu + [1.0, 2.0, 0.0], cov) == pytest.approx(5.0)
    # diagonal covariances: sum (sqrt(a) - sqrt(b))^2
    a, b = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance(np.zeros(2), a, np.zeros(2), b) == pytest.approx((1 - 3) ** 2 + (2 - 1) ** 2)


def test_feature_stats_and_fd_on_samples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2)) * [1.0, 2.0] + [3.0, -1.0]
    mu, cov = feature_stats(x)
    assert np.allclose(mu, [3.0, -1.0], atol=0.05) and np.allclose(np.diag(cov), [1.0, 4.0], rtol=0.05)
    imgs = torch.rand(64, 3, 16, 16) * 2 - 1
    assert pixel_features(imgs).shape == (64, 192)
    assert fd(imgs, imgs) == pytest.approx(0.0, abs=1e-6)
    assert fd(imgs, imgs + 0.5) == pytest.approx(192 * 0.25, rel=1e-6)  # a shift of 0.5 in every feature
