"""Kaldi's update rules (nnet/optim.py): max-change scaling, xconfig initialisation, and a
relu-renorm network on raw (uncentred) features that learns with them."""

from __future__ import annotations

import math

import pytest
import torch

from babelflow.nnet.model import ModelConfig, MultiTaskModel, Renorm, TaskSpec
from babelflow.nnet.natgrad import NaturalGradient
from babelflow.nnet.optim import MaxChange, components, kaldi_init

TINY = {"layers": [{"dim": 32, "splice": [-1, 0, 1]}, {"dim": 32, "splice": [0]}], "bottleneck": {"dim": 16},
        "frame_head": {"hidden": [32]}, "norm": "renorm"}


def _model(cfg: dict = TINY, feat_dim: int = 8, classes: int = 4) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(ModelConfig.from_dict(cfg), feat_dim, [TaskSpec("a", "frame", classes)])


def _norms(model: MultiTaskModel, before: dict[str, torch.Tensor]) -> dict[str, float]:
    """Update norm per affine (weight + bias together, as a Kaldi component)."""
    out: dict[str, float] = {}
    for name, p in model.named_parameters():
        comp = name.rsplit(".", 1)[0]
        out[comp] = out.get(comp, 0.0) + float(((p.detach() - before[name]) ** 2).sum())
    return {k: math.sqrt(v) for k, v in out.items()}


def _sgd_step(model: MultiTaskModel, mc: MaxChange, lr: float) -> dict[str, float]:
    x = torch.randn(6, 12, 8) * 3 + 10
    y = torch.randint(0, 4, (6, 10))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss = -model(x).gather(-1, y[..., None]).mean()
    loss.backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    mc.before()
    opt.step()
    mc.after()
    return _norms(model, before)


def _trained_output(model: MultiTaskModel) -> MultiTaskModel:
    """xconfig's init, with a non-zero output layer (a zero one passes no gradient down)."""
    kaldi_init(model)
    torch.nn.init.normal_(model.heads["output-0"].output.weight)
    return model


def test_max_change_caps_each_layer():
    model = _trained_output(_model())
    norms = _sgd_step(model, MaxChange(components(model, 0.05, 0.1), 0.0), lr=100.0)
    assert norms["heads.output-0.output"] <= 0.1 + 1e-5
    hidden = {k: v for k, v in norms.items() if "output-0.output" not in k}
    assert len(hidden) == 4 and all(v <= 0.05 + 1e-5 for v in hidden.values()), hidden
    assert max(hidden.values()) > 0.05 - 1e-4  # a lr this large hits the cap


def test_max_param_change_caps_the_whole_update():
    model = _trained_output(_model())
    norms = _sgd_step(model, MaxChange(components(model, 0.75, 1.5), 0.2), lr=100.0)
    assert math.sqrt(sum(v ** 2 for v in norms.values())) == pytest.approx(0.2, rel=1e-4)


def test_small_updates_are_left_alone():
    """Below the caps the update is exactly the optimiser's (same as without MaxChange)."""
    a, b = _trained_output(_model()), _model()
    b.load_state_dict(a.state_dict())
    torch.manual_seed(1)
    na = _sgd_step(a, MaxChange(components(a, 0.75, 1.5), 2.0), lr=1e-3)
    torch.manual_seed(1)
    nb = _sgd_step(b, MaxChange(components(b, 0.0, 0.0), 0.0), lr=1e-3)
    assert na == nb
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_an_infinite_update_is_not_applied():
    """Kaldi: "Infinite parameter change, will not apply": every parameter keeps its old value."""
    model = _trained_output(_model())
    before = [p.detach().clone() for p in model.parameters()]
    mc = MaxChange(components(model, 0.75, 1.5), 2.0)
    mc.before()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
        for p in model.parameters():
            p.add_(0.01)
    factor, glob = mc.after()
    assert float(factor) == float(glob) == 0.0
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_kaldi_init_statistics():
    cfg = {"layers": [{"dim": 400, "splice": [-1, 0, 1]}], "frame_head": {"hidden": [300]}, "norm": "renorm"}
    model = _model(cfg, feat_dim=100, classes=5)
    kaldi_init(model, bias_stddev=1.0)
    w, bias = model.trunk[0].linear.weight, model.trunk[0].linear.bias  # in 300
    assert abs(float(w.mean())) < 0.002 and float(w.std()) == pytest.approx(1 / math.sqrt(300), rel=0.02)
    assert float(bias.std()) == pytest.approx(1.0, rel=0.15)
    hidden = model.heads["output-0"].hidden[0]  # in 400
    assert float(hidden.weight.std()) == pytest.approx(1 / math.sqrt(400), rel=0.02)
    out = model.heads["output-0"].output
    assert not out.weight.any() and not out.bias.any()


def test_renorm_is_kaldis_normalize_component():
    """y = x / sqrt(max(2^-66, |x|^2 / D)) (target-rms 1, no log-stddev): every row has rms 1."""
    x = torch.randn(3, 7, 50) * 5 + 2
    y = Renorm()(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(3, 7), atol=1e-5)
    assert torch.allclose(y * x.pow(2).mean(-1, keepdim=True).sqrt(), x, atol=1e-4)
    assert not Renorm()(torch.zeros(2, 4)).isnan().any()


def _train_tiny(natural_gradient: bool, steps: int = 100) -> list[float]:
    """Raw fbank-like input (40 dims with a large common offset) through a relu-renorm network,
    Kaldi's way: xconfig init, plain SGD, max-change, with or without the natural gradient."""
    torch.manual_seed(0)
    dim = 40
    protos = torch.randn(4, dim)
    y = torch.randint(0, 4, (64, 12))
    x = protos[y] + 2 * torch.randn(64, 12, dim) + 12.0  # the label of frame t is in x[:, t]
    model = _model({"layers": [{"dim": 64, "splice": [-1, 0, 1]}, {"dim": 64, "splice": [0]}],
                    "bottleneck": {"dim": 32}, "frame_head": {"hidden": [64]}, "norm": "renorm"}, feat_dim=dim)
    kaldi_init(model)
    ng = NaturalGradient(model) if natural_gradient else None
    mc = MaxChange(components(model, 0.75, 1.5), 2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    losses = []
    for _ in range(steps):
        i = torch.randint(0, 64, (16,))
        opt.zero_grad()
        if ng:
            ng.begin()
        loss = -model(x[i]).gather(-1, y[i, 1:-1, None]).mean()
        loss.backward()
        if ng:
            ng.finish()
        mc.before()
        opt.step()
        mc.after()
        losses.append(float(loss.detach()))
    return losses


def test_tiny_renorm_network_learns_on_raw_features():
    """With the natural gradient the loss falls well below chance; without it the same SGD
    (plain gradient, same learning rate and max-change) gets nowhere: the input mean swamps it."""
    losses = _train_tiny(natural_gradient=True)
    assert losses[0] == pytest.approx(math.log(4), rel=1e-4)  # zero output layer: uniform
    assert sum(losses[-10:]) / 10 < 0.5 * math.log(4)
    plain = _train_tiny(natural_gradient=False)
    assert sum(plain[-10:]) / 10 > 0.9 * math.log(4)


def test_natural_gradient_with_heavy_smoothing_is_the_plain_gradient():
    """alpha -> inf makes G a multiple of I: the preconditioned gradient is the gradient."""
    model = _trained_output(_model())
    ng = NaturalGradient(model, alpha=1e12)
    x, y = torch.randn(6, 12, 8) + 10, torch.randint(0, 4, (6, 10))
    ng.begin()
    (-model(x).gather(-1, y[..., None]).mean()).backward()
    plain = [p.grad.clone() for p in model.parameters()]
    ng.finish()
    for g, p in zip(plain, model.parameters()):
        assert torch.allclose(p.grad, g, rtol=1e-3, atol=1e-6)


def test_natural_gradient_keeps_the_norm_and_damps_the_mean_direction():
    """Each side is rescaled to its own Frobenius norm; on uncentred rows the preconditioned rows
    point far less along their mean than the rows themselves (what lets raw features train)."""
    from babelflow.nnet.natgrad import _Side

    torch.manual_seed(0)
    x = torch.randn(500, 200) + 10.0
    side = _Side(200, 20, 4.0, 2000.0, 4)
    xh = side.precondition(x)
    assert float(xh.norm()) == pytest.approx(float(x.norm()), rel=1e-4)
    mean = torch.full((200,), 200 ** -0.5)
    share = lambda m: float((m @ mean).norm() / m.norm())
    assert share(x) > 0.95 and share(xh) < 0.5 * share(x)
