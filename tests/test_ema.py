import torch

from condiff.train.ema import EMA


def test_ema_closed_form():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.9)
    assert ema.decay_at(0) == 0.1 and ema.decay_at(10 ** 6) == 0.9
    expected = 0.0
    for step in range(1, 30):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * step
    assert torch.allclose(ema.model.weight, torch.full((1, 2), expected, dtype=torch.float32), atol=1e-5)
    assert not ema.model.weight.requires_grad
