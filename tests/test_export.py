"""Kaldi export of task models, and the numpy nnet3 evaluator checked against Kaldi's nnet3-compute."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from babelflow.errors import BabelflowError
from babelflow.kaldi.nnet3 import AmNnetSimple, Nnet, compute_context, read_am_nnet, read_nnet
from babelflow.kaldi.nnet3_builders import affine_component
from babelflow.kaldi.nnet3_components import Component
from babelflow.kaldi.nnet3_compute import compute
from babelflow.kaldi.transition_model import TransitionModel, write_transition_model
from babelflow.nnet.checkpoint import load_task_model, save_task_model
from babelflow.nnet.cli import register_export
from babelflow.nnet.export import export_kaldi, export_kaldi_dir, task_model_to_nnet
from babelflow.nnet.infer import padded
from babelflow.nnet.model import FrameBatchNorm, ModelConfig, MultiTaskModel, TaskSpec
from babelflow.nnet.modeldir import ModelDir

TOL = 1e-4


# ----------------------------------------------------------------------------- evaluator vs Kaldi
def _fixture_feats(fx: Path) -> dict[str, np.ndarray]:
    import kaldiio

    feats = {}
    for line in (fx / "lang0" / "feats.scp").read_text().splitlines():
        utt, rx = line.split()
        feats[utt] = kaldiio.load_mat(str(fx / rx))  # paths in the scp are relative to the fixture folder
    return feats


def test_compute_matches_kaldi_nnet3_compute(kaldi_fixtures):
    import kaldiio

    am = read_am_nnet(kaldi_fixtures / "am" / "lang0" / "final_adj.mdl")
    raw = dict(kaldiio.load_ark(str(kaldi_fixtures / "am" / "lang0" / "compute.final_adj.raw.txt")))
    with_priors = dict(kaldiio.load_ark(str(kaldi_fixtures / "am" / "lang0" / "compute.final_adj.use-priors.txt")))
    feats = _fixture_feats(kaldi_fixtures)
    assert set(feats) == set(raw) == set(with_priors) and am.priors.size == 18
    for utt, f in feats.items():
        out = compute(am.nnet, f)  # BatchNorm in test mode, as nnet3-compute forces it
        assert out.shape == raw[utt].shape == (f.shape[0], 18)
        np.testing.assert_allclose(out, raw[utt], atol=TOL, rtol=0)
        np.testing.assert_allclose(out - np.log(am.priors), with_priors[utt], atol=TOL, rtol=0)


def test_compute_other_output_and_errors(kaldi_fixtures):
    nnet = read_am_nnet(kaldi_fixtures / "am" / "lang0" / "final.mdl").nnet
    f = next(iter(_fixture_feats(kaldi_fixtures).values()))
    out1 = compute(nnet, f, output="output-1")
    assert out1.shape == (f.shape[0], 12)
    np.testing.assert_allclose(np.exp(out1).sum(1), 1.0, atol=1e-5)
    with pytest.raises(BabelflowError, match="no output node 'nope'"):
        compute(nnet, f, output="nope")
    with pytest.raises(BabelflowError, match="features have dim 39"):
        compute(nnet, f[:, :39])


def test_compute_refuses_what_it_does_not_implement():
    lines = ["input-node name=input dim=4", "component-node name=p component=p input=input",
             "output-node name=output input=p objective=linear"]
    nnet = Nnet(lines, [("p", Component("PnormComponent", [("<InputDim>", 4), ("<OutputDim>", 2)]))])
    with pytest.raises(BabelflowError, match="PnormComponent is not implemented"):
        compute(nnet, np.zeros((3, 4), np.float32))
    lines = ["input-node name=input dim=4", "input-node name=ivector dim=2",
             "component-node name=a component=a input=Append(input, ReplaceIndex(ivector, t, 0))",
             "output-node name=output input=a objective=linear"]
    nnet = Nnet(lines, [("a", affine_component(np.ones((3, 6)), np.zeros(3)))])
    with pytest.raises(BabelflowError, match="give an i-vector"):
        compute(nnet, np.zeros((3, 4), np.float32))
    out = compute(nnet, np.zeros((3, 4), np.float32), ivector=np.array([1.0, 2.0]))
    np.testing.assert_allclose(out, 3.0)


# ----------------------------------------------------------------------------- export
NUM_PHONES = 4  # monophone TransitionModel, 3 states: 12 pdfs = the head size


def make_model(norm: str, ivector_dim: int, bottleneck: bool, hidden: list[int], seed: int = 0,
               kind: str = "frame") -> MultiTaskModel:
    cfg = ModelConfig.from_dict({
        "layers": [{"dim": 16, "splice": [-2, -1, 0, 1, 2]}, {"dim": 12, "splice": [0]},
                   {"dim": 14, "splice": [-3, 0, 2]}],
        "bottleneck": {"dim": 6, "splice": [0, 1]} if bottleneck else None,
        "frame_head": {"hidden": hidden}, "utterance_head": {"hidden": hidden}, "norm": norm})
    torch.manual_seed(seed)
    model = MultiTaskModel(cfg, 7, [TaskSpec("lang0", kind, 3 * NUM_PHONES)], ivector_dim, ["output"])
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):  # the output layer starts at zero: make it count
                m.weight.normal_(0, 1 / m.in_features ** 0.5, generator=gen)
                m.bias.normal_(0, 0.5, generator=gen)
            if isinstance(m, FrameBatchNorm):  # non-trivial running statistics
                m.bn.running_mean.uniform_(0.0, 1.0, generator=gen)
                m.bn.running_var.uniform_(0.2, 2.0, generator=gen)
    return model.eval()


def save_dir(tmp: Path, model: MultiTaskModel, priors: np.ndarray | None = None, trans: bool = True) -> Path:
    t = model.tasks[0]
    meta = {"task": t.name, "kind": t.kind, "num_outputs": t.num_outputs, "left_context": model.left_context,
            "right_context": model.right_context, "input_dim": model.input_dim, "ivector_dim": model.ivector_dim,
            "feat_type": "fbank", "cmvn_opts": "--norm-means=false --norm-vars=false", "labels": [],
            "feature_conf": "", "priors": None if priors is None else torch.from_numpy(priors.astype(np.float32)),
            "prior_method": "counts" if priors is not None else ""}
    save_task_model(tmp, model, meta)
    if trans:
        write_transition_model(tmp / "trans.mdl", TransitionModel.monophone(NUM_PHONES))
    return tmp


def torch_forward(model: MultiTaskModel, feats: np.ndarray, ivector: np.ndarray | None) -> np.ndarray:
    x = torch.from_numpy(padded(feats, model.left_context, model.right_context))[None]
    iv = torch.from_numpy(ivector)[None] if ivector is not None else None
    with torch.no_grad():
        return model(x, 0, iv)[0].numpy()


CASES = [("renorm", 0, False, []), ("renorm", 5, True, [10]), ("batchnorm", 0, True, [10, 9]),
         ("batchnorm", 5, False, [8]), (None, 5, True, [])]


@pytest.mark.parametrize("norm,ivector_dim,bottleneck,hidden", CASES)
def test_export_matches_pytorch(tmp_path, norm, ivector_dim, bottleneck, hidden):
    model = make_model(norm, ivector_dim, bottleneck, hidden)
    rng = np.random.default_rng(1)
    priors = rng.random(3 * NUM_PHONES) + 0.05
    priors /= priors.sum()
    d = save_dir(tmp_path / "model", model, priors)
    models = {}
    for binary in (True, False):
        out = tmp_path / f"final.{'bin' if binary else 'txt'}.mdl"
        info = export_kaldi(d, out, binary=binary, raw=tmp_path / f"final.{binary}.raw")
        assert info["left_context"] == model.left_context and info["right_context"] == model.right_context
        assert info["priors"] and info["num_pdfs"] == 3 * NUM_PHONES
        am = read_am_nnet(out)
        assert (am.left_context, am.right_context) == (model.left_context, model.right_context)
        assert compute_context(am.nnet) == (model.left_context, model.right_context)
        if binary:
            np.testing.assert_array_equal(am.priors, priors.astype(np.float32))
        else:  # text keeps 7 significant digits, as Kaldi's
            np.testing.assert_allclose(am.priors, priors, rtol=1e-6)
        tm = TransitionModel.monophone(NUM_PHONES)
        assert am.transition_model == tm if binary else am.transition_model.tuples == tm.tuples
        raw = read_nnet(tmp_path / f"final.{binary}.raw")
        assert [n.line() for n in raw.nodes()] == am.nnet.config_lines
        assert len(raw.components) == len(am.nnet.components)
        models[binary] = am
    assert models[True].nnet.config_lines == models[False].nnet.config_lines
    text = (tmp_path / "final.txt.mdl").read_bytes()
    again = io.BytesIO()
    read_am_nnet(tmp_path / "final.txt.mdl").write(again, binary=False)
    assert again.getvalue() == text
    again = io.BytesIO()
    models[True].write(again, binary=True)
    assert again.getvalue() == (tmp_path / "final.bin.mdl").read_bytes()

    lines = models[True].nnet.config_lines
    assert ("input-node name=ivector dim=5" in lines) == (ivector_dim > 0)
    first = next(line for line in lines if line.startswith("component-node name=tdnn1.affine"))
    assert first.endswith("input=Append(Offset(input, -2), Offset(input, -1), input, Offset(input, 1), Offset(input, 2)"
                          + (", ReplaceIndex(ivector, t, 0))" if ivector_dim else ")"))
    names = [n for n, _ in models[True].nnet.components]
    assert names[:2] == ["tdnn1.affine", "tdnn1.relu"] and names[-2:] == ["output.affine", "output.log-softmax"]
    assert (f"tdnn1.{norm}" in names) if norm else not any(n.endswith(("renorm", "batchnorm")) for n in names)
    assert ("tdnn_bn.affine" in names) == bottleneck
    assert lines[-1] == "output-node name=output input=output.log-softmax objective=linear"
    if norm == "batchnorm":
        bn = models[True].nnet.component("tdnn2.batchnorm")
        assert bn.get("<TestMode>") and bn.get("<Count>") > 0
        np.testing.assert_array_equal(bn.get("<StatsVar>"), model.trunk[1].norm.bn.running_var.numpy())

    for T in (1, 3, 40):
        feats = rng.standard_normal((T, 7)).astype(np.float32)
        iv = rng.standard_normal(ivector_dim).astype(np.float32) if ivector_dim else None
        expect = torch_forward(model, feats, iv)
        for am in models.values():
            np.testing.assert_allclose(compute(am.nnet, feats, iv), expect, atol=TOL, rtol=0)


def test_export_head_layer_names(tmp_path):
    nnet = task_model_to_nnet(make_model("renorm", 0, True, [10, 9]), {"kind": "frame"})
    names = [n for n, _ in nnet.components]
    assert "prefinal-affine1.renorm" in names and "prefinal-affine2.affine" in names
    assert nnet.component("output.affine").type == "NaturalGradientAffineComponent"
    assert nnet.component("output.affine").get("<MaxChange>") == 1.5
    nnet = task_model_to_nnet(make_model("renorm", 0, True, [10]), {"kind": "frame"})
    assert "prefinal-affine.relu" in [n for n, _ in nnet.components]


def test_export_without_priors_writes_empty_vector(tmp_path):
    d = save_dir(tmp_path / "m", make_model("renorm", 0, False, []))
    info = export_kaldi(d, tmp_path / "final.mdl")
    assert not info["priors"] and info["raw"] is None
    assert read_am_nnet(tmp_path / "final.mdl").priors.size == 0


def test_export_refuses_utterance_tasks(tmp_path):
    d = save_dir(tmp_path / "m", make_model("renorm", 0, False, [8], kind="utterance"), trans=False)
    with pytest.raises(BabelflowError, match="utterance task.*AmNnetSimple.*frame"):
        export_kaldi(d, tmp_path / "final.mdl")
    assert not (tmp_path / "final.mdl").exists()


def test_export_needs_trans_mdl(tmp_path):
    d = save_dir(tmp_path / "m", make_model("renorm", 0, False, []), trans=False)
    with pytest.raises(BabelflowError, match="no trans.mdl"):
        export_kaldi(d, tmp_path / "final.mdl", raw=tmp_path / "final.raw")
    assert not (tmp_path / "final.mdl").exists() and not (tmp_path / "final.raw").exists()


def test_export_pdf_mismatch_is_an_error(tmp_path):
    d = save_dir(tmp_path / "m", make_model("renorm", 0, False, []), trans=False)
    write_transition_model(d / "trans.mdl", TransitionModel.monophone(NUM_PHONES + 1))
    with pytest.raises(BabelflowError, match="pdfs"):
        export_kaldi(d, tmp_path / "final.mdl")


def test_cli_export_kaldi(tmp_path):
    model = make_model("batchnorm", 5, True, [8])
    d = save_dir(tmp_path / "m", model)
    parser = argparse.ArgumentParser()
    register_export(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["export-kaldi", str(d), str(tmp_path / "final.mdl"), "--binary=false",
                              "--raw", str(tmp_path / "final.raw")])
    args.func(args)
    assert (tmp_path / "final.mdl").read_bytes().startswith(b"<TransitionModel>")
    am = read_am_nnet(tmp_path / "final.mdl")
    assert isinstance(am, AmNnetSimple) and read_nnet(tmp_path / "final.raw").config_lines == am.nnet.config_lines
    loaded, blob = load_task_model(d)
    feats = np.random.default_rng(0).standard_normal((9, 7)).astype(np.float32)
    iv = np.ones(5, np.float32)
    np.testing.assert_allclose(compute(am.nnet, feats, iv), torch_forward(loaded, feats, iv), atol=TOL, rtol=0)


def test_cli_export_kaldi_dir(tmp_path):
    """--dir: a model dir decode.sh can use; a failed export leaves no partial dir behind."""
    d = save_dir(tmp_path / "m", make_model("batchnorm", 0, False, [8]))
    (d / "cmvn_opts").write_text("--norm-means=false --norm-vars=false\n")
    (d / "conf").mkdir()
    (d / "conf" / "fbank.conf").write_text("--num-mel-bins=7\n")
    parser = argparse.ArgumentParser()
    register_export(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["export-kaldi", "--dir", str(d), str(tmp_path / "kaldi")])
    args.func(args)
    out = tmp_path / "kaldi"
    assert isinstance(read_am_nnet(out / "final.mdl"), AmNnetSimple)
    assert (out / "cmvn_opts").read_text() == (d / "cmvn_opts").read_text()
    assert (out / "conf" / "fbank.conf").read_text() == "--num-mel-bins=7\n"
    assert not (out / "tree").exists()  # the model dir has none
    bad = save_dir(tmp_path / "bad", make_model("renorm", 0, False, []), trans=False)
    with pytest.raises(BabelflowError, match="no trans.mdl"):
        args = parser.parse_args(["export-kaldi", "--dir", str(bad), str(tmp_path / "kaldi2")])
        args.func(args)
    assert not (tmp_path / "kaldi2").exists() and not list(tmp_path.glob(".kaldi2.*"))


def test_export_dir_carries_the_tree(kaldi_fixtures, tmp_path):
    """The model dir's tree (Kaldi's, here) lands beside final.mdl byte for byte, for mkgraph.sh."""
    d = save_dir(tmp_path / "m", make_model("renorm", 0, False, []))
    tree = (kaldi_fixtures / "lang0" / "tree").read_bytes()
    (d / "tree").write_bytes(tree)
    info = export_kaldi_dir(d, tmp_path / "kaldi")
    assert (tmp_path / "kaldi" / "tree").read_bytes() == tree and info["tree"] == str(tmp_path / "kaldi" / "tree")
    assert isinstance(read_am_nnet(tmp_path / "kaldi" / "final.mdl"), AmNnetSimple)


def test_model_dir_errors_name_the_missing_file(tmp_path):
    md = ModelDir(tmp_path / "m")
    for prop, name in [("model_file", "model.pt"), ("trans_mdl", "trans.mdl"), ("tree", "tree"),
                       ("cmvn_opts", "cmvn_opts"), ("info", "info"), ("kind", "info/kind"), ("priors", "priors.txt"),
                       ("metrics", "eval/metrics.json")]:
        with pytest.raises(BabelflowError, match=rf"m: no {name} \("):
            getattr(md, prop)
    with pytest.raises(BabelflowError, match="m: no task model here"):
        load_task_model(tmp_path / "m")
    assert not md.has_tree and not md.has_priors and md.conf_files == [] and md.classes == [] and md.kaldi_files() == []


def test_model_dir_reads_what_was_written(tmp_path):
    model = make_model("renorm", 5, False, [8])
    d = save_dir(tmp_path / "m", model)
    md = ModelDir(d)
    md.write_info({"kind": "frame", "num_outputs": 3, "left_context": 4, "right_context": 2})
    (d / "priors.txt").write_text(" [ 0.25 0.5 0.25 ]\n")
    (d / "cmvn_opts").write_text("--norm-means=true\n")
    assert (md.kind, md.num_outputs, md.context, md.cmvn_opts) == ("frame", 3, (4, 2), "--norm-means=true")
    np.testing.assert_array_equal(md.priors, [0.25, 0.5, 0.25])
    assert md.trans_mdl == d / "trans.mdl" and [p.name for p in md.kaldi_files()] == ["cmvn_opts", "info"]
    loaded, blob = md.load()
    assert blob["ivector_dim"] == 5 and not loaded.training
    assert ModelDir(d / "model.pt").path == d and ModelDir(d / "model.pt").load()[1]["task"] == blob["task"]
