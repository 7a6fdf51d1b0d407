"""Utterance heads' options (model.utterance_head input/pooling): shapes, padding, config, split, files."""

from __future__ import annotations

import argparse

import pytest
import torch

from babelflow.errors import BabelflowError
from babelflow.nnet.checkpoint import (
    load_checkpoint,
    load_model,
    load_task_model,
    save_checkpoint,
    save_model,
    save_task_model,
)
from babelflow.nnet.export import task_model_to_nnet
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec

BASE = {"layers": [{"dim": 24, "splice": [-2, -1, 0, 1, 2]}, {"dim": 20, "splice": [0]},
                   {"dim": 24, "splice": [-1, 2]}],
        "bottleneck": {"dim": 12}, "frame_head": {"hidden": [16]}, "norm": "batchnorm"}
TASKS = [TaskSpec("en", "frame", 7), TaskSpec("voice", "utterance", 5)]
VARIANTS = [{"input": i, "pooling": p, "attention_dim": 8, "stats_norm": i == "layers"}
            for i in ("last", "layers") for p in ("stats", "attentive")]
VARIANTS.append({**VARIANTS[-1], "project": 6})  # layers, attentive, projected to 6 dims first


def _name(u: dict) -> str:
    return f"{u['input']}-{u['pooling']}{'-project' if u.get('project') else ''}"


def _model(utt: dict, seed: int = 0, ivector_dim: int = 0) -> MultiTaskModel:
    torch.manual_seed(seed)
    model = MultiTaskModel(ModelConfig.from_dict({**BASE, "utterance_head": {"hidden": [16], **utt}}), 10, TASKS,
                           ivector_dim)
    for p in model.parameters():  # the output affines start at zero: make every output depend on the input
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_layers_are_cropped_to_the_output_frames():
    model = _model({"input": "layers"})
    x = torch.randn(3, 40, 10)
    layers = model.embed_layers(x)
    assert (model.left_context, model.right_context) == (3, 4)
    assert [h.shape for h in layers] == [(3, 33, 24), (3, 33, 20), (3, 33, 24), (3, 33, 12)]
    assert torch.equal(layers[-1], model.embed(x))
    # the trunk's output frame t is input frame t+3; the first two layers' frame j is input frame j+2
    full = model.trunk[0](x)
    assert torch.equal(layers[0], full[:, 1:1 + 33])
    assert torch.equal(layers[1], model.trunk[1](full)[:, 1:1 + 33])


@pytest.mark.parametrize("utt", VARIANTS, ids=_name)
def test_shapes_and_padding_change_nothing(utt):
    """Frames past an utterance's length (the egs reader repeats the last one) get no weight."""
    model = _model(utt)
    x = torch.randn(2, 60, 10)
    out = model(x, 1, mask=torch.ones(2, 53, dtype=torch.bool))
    assert out.shape == (2, 5) and torch.allclose(out.exp().sum(-1), torch.ones(2))
    assert torch.allclose(out, model(x, 1))  # no mask: every frame
    assert model(x, 0).shape == (2, 53, 7)
    mask = torch.arange(53)[None, :] < torch.tensor([[30], [53]])
    garbage = x.clone()
    garbage[0, 30 + 7:] = 100 * torch.randn_like(garbage[0, 30 + 7:])  # past 30 output frames + context
    a, b = model(x, 1, mask=mask), model(garbage, 1, mask=mask)
    assert torch.allclose(a, b, atol=1e-5)
    alone = model(x[:1, :30 + 7], 1)  # the utterance without padding
    assert torch.allclose(a[0], alone[0], atol=1e-5)


@pytest.mark.parametrize("utt", VARIANTS[::3], ids=_name)
def test_padding_stays_out_of_batch_norm_statistics(utt):
    """In training too: the trunk's batch norms take their statistics from the valid frames only,
    so a block's padding moves neither its outputs nor the running statistics."""
    x, mask = torch.randn(3, 60, 10), torch.arange(53)[None, :] < torch.tensor([[30], [53], [41]])
    garbage = x.clone()
    garbage[0, 30 + 7:] = 50 + 100 * torch.randn_like(garbage[0, 30 + 7:])
    runs = []
    for inp in (x, garbage):
        model = _model(utt).train()
        out = model(inp, 1, mask=mask)
        runs.append((out, [m.running_mean.clone() for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]))
    assert torch.allclose(runs[0][0], runs[1][0], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(runs[0][1], runs[1][1]))
    model = _model(utt).train()  # frame tasks (no mask): every frame, as before
    assert model(x, 0).shape == (3, 53, 7)


def test_options_change_the_head():
    n = {f"{u['input']}-{u['pooling']}": _model(u).heads["output-1"] for u in VARIANTS[:4]}
    assert n["last-stats"].hidden[0].in_features == 2 * 12
    assert n["layers-stats"].hidden[0].in_features == 2 * (24 + 20 + 24 + 12)
    assert n["last-attentive"].pooling is not None and n["last-stats"].pooling is None
    assert n["layers-stats"].stats_norm is not None and n["last-stats"].stats_norm is None
    projected = _model(VARIANTS[-1]).heads["output-1"]
    assert projected.project[0].in_features == 24 + 20 + 24 + 12 and projected.hidden[0].in_features == 2 * 6
    assert n["layers-attentive"].project is None


def test_ivector_and_no_bottleneck():
    cfg = ModelConfig.from_dict({**BASE, "bottleneck": None,
                                 "utterance_head": {"hidden": [], "input": "layers", "pooling": "attentive"}})
    model = MultiTaskModel(cfg, 10, TASKS, ivector_dim=3).eval()
    assert model(torch.randn(2, 30, 10), 1, torch.randn(2, 3)).shape == (2, 5)


def test_config_round_trips_and_old_files_load_as_before():
    utt = {"hidden": [16], "input": "layers", "pooling": "attentive", "attention_dim": 8, "stats_norm": True,
           "project": 5}
    cfg = ModelConfig.from_dict({**BASE, "utterance_head": utt})
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg and cfg.to_dict()["utterance_head"] == utt
    p = argparse.ArgumentParser()
    ModelConfig.add_arguments(p)
    assert ModelConfig.from_args(p.parse_args(cfg.to_args())) == cfg
    old = ModelConfig.from_dict({**BASE, "utterance_head": {"hidden": [16]}})  # a model file from before
    assert (old.utterance_input, old.utterance_pooling, old.utterance_stats_norm, old.utterance_project) == (
        "last", "stats", False, 0)


@pytest.mark.parametrize("bad", [{"input": "all"}, {"pooling": "max"}, {"attention_dim": 0}, {"heads": 2},
                                 {"project": -1}])
def test_bad_options_are_errors(bad):
    with pytest.raises(BabelflowError, match="utterance_head"):
        ModelConfig.from_dict({**BASE, "utterance_head": {"hidden": [16], **bad}})


def test_split_and_files_round_trip(tmp_path):
    model = _model({"input": "layers", "pooling": "attentive", "attention_dim": 8, "stats_norm": True})
    x, mask = torch.randn(2, 50, 10), torch.arange(43)[None, :] < torch.tensor([[20], [43]])
    want = model(x, 1, mask=mask)
    single = model.split(1).eval()
    assert torch.equal(single(x, 0, mask=mask), want)
    save_model(tmp_path / "final.pt", model, {}, ["en", "voice"])
    loaded, _ = load_model(tmp_path / "final.pt")
    assert torch.equal(loaded.eval()(x, 1, mask=mask), want)
    save_task_model(tmp_path, single, {"task": "voice", "kind": "utterance", "input_dim": 10, "ivector_dim": 0})
    back, blob = load_task_model(tmp_path)
    assert torch.equal(back(x, 0, mask=mask), want) and back.config.utterance_pooling == "attentive"
    with pytest.raises(BabelflowError, match="utterance task"):  # Kaldi's final.mdl holds frame tasks only
        task_model_to_nnet(back, blob)
    frame = model.split(0)  # a frame task's export is untouched by the utterance head's options
    assert "output.affine" in dict(task_model_to_nnet(frame, {"kind": "frame"}).components)


def test_training_checkpoint_round_trip(tmp_path):
    model = _model({"input": "layers", "pooling": "attentive", "attention_dim": 8, "stats_norm": True}).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, mask = torch.randn(4, 40, 10), torch.arange(33)[None, :] < torch.tensor([[10], [20], [30], [33]])
    (-model(x, 1, mask=mask)[:, 0].sum()).backward()
    optim.step()
    save_checkpoint(tmp_path / "checkpoint.pt", "h", model, optim, {"epoch": 1})
    fresh = _model({"input": "layers", "pooling": "attentive", "attention_dim": 8, "stats_norm": True}, seed=1)
    fresh_optim = torch.optim.AdamW(fresh.parameters(), lr=1e-3)
    assert load_checkpoint(tmp_path / "checkpoint.pt", "h", fresh, fresh_optim) == {"epoch": 1}
    model.eval(), fresh.eval()
    assert torch.equal(fresh(x, 1, mask=mask), model(x, 1, mask=mask))
    with pytest.raises(RuntimeError):  # a head of other options does not take these tensors
        load_checkpoint(tmp_path / "checkpoint.pt", "h", _model({"input": "last"}), fresh_optim)


@pytest.mark.parametrize("stats_norm", [False, True])
def test_utterance_heads_batch_norm_stats_come_from_the_test_time_trunk(stats_norm):
    """recompute_batchnorm_stats: the trunk's statistics from every block, then the utterance heads'
    from the trunk in test mode (as valid and compute run it), not from a block's batch statistics."""
    from types import SimpleNamespace

    from babelflow.nnet.data import Batch
    from babelflow.nnet.diagnostics import recompute_batchnorm_stats

    model = _model({"input": "layers", "pooling": "attentive", "attention_dim": 8, "stats_norm": stats_norm})
    frames = Batch(0, 1.0, torch.randn(8, 15, 10), None, torch.zeros(8, 8, dtype=torch.long), torch.ones(8, 8), None)
    utts = Batch(1, 1.0, 3 + torch.randn(6, 40, 10), None, torch.zeros(6, dtype=torch.long), None,
                 torch.tensor([33, 20, 25, 33, 30, 10]))
    batches = [frames, utts]
    schedule = SimpleNamespace(blocks=lambda part: [[SimpleNamespace(task=b.task, i=i) for i, b in enumerate(batches)]],
                               load=lambda blk, part, device: batches[blk.i])
    assert recompute_batchnorm_stats(model, schedule, "cpu") == 2
    model.eval()
    head = model.heads["output-1"]
    mask = torch.arange(33)[None, :] < utts.lengths[:, None]
    seen = {}
    # the head's first batch norm: on the pooled statistics, or after the first hidden layer's ReLU
    norm, before = (head.stats_norm, head.stats_norm) if stats_norm else (head.hidden[2], head.hidden[1])
    hook = before.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0] if stats_norm else o))
    model(utts.x, 1, mask=mask)
    hook.remove()
    assert torch.allclose(norm.bn.running_mean, seen["x"].mean(dim=0), atol=1e-5)


@pytest.mark.parametrize("utt", VARIANTS, ids=_name)
def test_diagnostics_sub_blocks_by_length_give_one_forwards_outputs(utt):
    """utterance_logp: trunk and pooling over sub-blocks of similar length (cropped to their longest),
    the classifier over the whole block: equal to one forward in test mode, in any row order."""
    from babelflow.nnet.data import Batch
    from babelflow.nnet.diagnostics import utterance_logp
    from babelflow.nnet.loss import valid_mask

    model = _model(utt, ivector_dim=3)
    lengths = torch.tensor([33, 5, 20, 33, 12, 27, 8])
    x = torch.randn(7, 40, 10)
    for r, n in enumerate(lengths.tolist()):  # the reader's padding: the last frame repeated
        x[r, n + 7:] = x[r, n + 6]
    b = Batch(1, 1.0, x, torch.randn(7, 3), torch.zeros(7, dtype=torch.long), None, lengths)
    want = model(b.x, 1, b.ivector, valid_mask(model, b))
    for budget in (8192, 60, 1):  # one sub-block; several; one row each
        assert torch.allclose(utterance_logp(model, b, budget), want, atol=1e-5), budget
    model.trunk[0].norm.train()  # a trunk taking batch statistics: rows are not independent
    with pytest.raises(RuntimeError, match="test mode"):
        utterance_logp(model, b)
