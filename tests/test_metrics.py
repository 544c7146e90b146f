"""KID, precision/recall and CLIP score: closed forms, and peers (torchmetrics, prdc) on the same features."""
import numpy as np
import pytest
import torch

from condiff.eval.metrics import kid, mmd2_unbiased, polynomial_kernel, precision_recall
from condiff.nets.clip import clip_score, contrastive_loss


def test_mmd_closed_form_on_two_points():
    x, y = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 1.0], [0.0, 0.0]])
    k = lambda a, b: (a @ b / 2 + 1) ** 3
    expected = (2 * k(x[0], x[1])) / 2 + (2 * k(y[0], y[1])) / 2 - 2 * np.mean([k(a, b) for a in x for b in y])
    assert mmd2_unbiased(x, y) == pytest.approx(expected)
    assert polynomial_kernel(x, y)[0, 0] == pytest.approx(k(x[0], y[0]))


def test_kid_matches_torchmetrics_poly_mmd():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(300, 16)), rng.normal(0.3, 1.2, size=(300, 16))
    ours = mmd2_unbiased(real, fake)
    peer = poly_mmd(torch.from_numpy(real), torch.from_numpy(fake)).item()
    assert ours == pytest.approx(peer, rel=1e-9)
    mean, std = kid(real, fake, subsets=5, subset_size=300)
    assert mean == pytest.approx(ours) and std == pytest.approx(0, abs=1e-12)  # full-size subsets are the whole sets


def test_kid_is_near_zero_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(500, 8)), rng.normal(size=(500, 8))
    same, _ = kid(a, b, subsets=20, subset_size=200)
    shifted, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.01 < shifted


def test_precision_recall_matches_prdc():
    from prdc import compute_prdc

    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(200, 5)), rng.normal(0.5, 0.7, size=(150, 5))
    p, r = precision_recall(real, fake, k=3)
    peer = compute_prdc(real, fake, nearest_k=3)
    assert p == pytest.approx(peer["precision"]) and r == pytest.approx(peer["recall"])


def test_precision_recall_closed_cases():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(100, 4))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = real + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)
    # a fake set collapsed onto a small part of the real data: precise, but low recall (mode dropping)
    plane = rng.normal(size=(400, 2))
    part = plane[np.argsort((plane ** 2).sum(1))[:20]]  # the 20 points nearest the mode
    p, r = precision_recall(plane, part + 1e-3)
    assert p == 1.0 and r < 0.15


def test_clip_score_and_contrastive_loss_closed_forms():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[0.6, 0.8], [-1.0, 0.0]])
    torch.testing.assert_close(clip_score(img, txt), torch.tensor([60.0, 0.0]))  # 100 max(cos, 0)
    # identical captions are positives, not negatives: telling duplicates apart is punished, not rewarded
    captions = ["a", "a", "b", "b"]
    same = torch.tensor([[1.0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]])
    assert contrastive_loss(50 * same, captions).item() == pytest.approx(np.log(2))  # uniform over 2 positives
    assert contrastive_loss(50 * torch.eye(4), captions).item() > 10
    assert contrastive_loss(50 * torch.eye(4), ["a", "b", "c", "d"]).item() == pytest.approx(0, abs=1e-6)


def test_hard_negative_columns_are_negatives_of_the_image_to_text_direction_only():
    captions = ["a", "b"]
    good = torch.tensor([[20.0, 0, 0], [0, 20, 0]])  # each image on its caption; the hard negative (column 2) low
    bad = torch.tensor([[0.0, 0, 20], [0, 20, 0]])  # image 0 prefers the hard negative
    assert contrastive_loss(good, captions).item() == pytest.approx(0, abs=1e-6)
    # text -> image ignores column 2: only image 0's row costs, log(1 + 1 + e^20) - 0 halved
    assert contrastive_loss(bad, captions).item() == pytest.approx(0.5 * (20 + np.log(1 + 2 * np.exp(-20))) / 2
                                                                 + 0.5 * np.log(2) / 2, rel=1e-4)


def test_fid_inception_loads_a_local_safetensors_file_and_rejects_wrong_ones(tmp_path):
    from safetensors.torch import save_file

    from condiff.eval.inception import FIDInception, inception_features, load_inception
    from condiff.io import CheckpointError

    torch.manual_seed(0)
    net = FIDInception().eval()
    for m in net.modules():  # non-trivial batch-norm statistics, as in real weights
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    # pytorch-fid's file also holds the 1008-way fc layer, which FID does not use
    save_file({**state, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}, tmp_path / "inc.safetensors")
    loaded = load_inception(tmp_path / "inc.safetensors")
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    feats = inception_features(loaded, images)
    assert feats.shape == (3, 2048) and (feats >= 0).all()  # pool3 follows a ReLU
    with torch.no_grad():
        np.testing.assert_allclose(feats, net(images).double().numpy(), rtol=1e-5, atol=1e-6)
    save_file({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, tmp_path / "cut.safetensors")
    with pytest.raises(CheckpointError, match="missing 'Mixed_7c"):
        load_inception(tmp_path / "cut.safetensors")
    save_file({**state, "Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 5, 5)}, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="expected \\(32, 3, 3, 3\\)"):
        load_inception(tmp_path / "bad.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_inception(tmp_path / "junk.safetensors")
