"""nnet3 raw nnets and AmNnetSimple models against files written by real Kaldi binaries."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from babelflow.errors import BabelflowError
from babelflow.kaldi.nnet3 import (
    AmNnetSimple,
    Nnet,
    compute_context,
    read_am_nnet,
    read_nnet,
    write_am_nnet,
    write_nnet,
)
from babelflow.kaldi.nnet3_builders import (
    affine_component,
    batchnorm_component,
    log_softmax_component,
    normalize_component,
    relu_component,
)
from babelflow.kaldi.nnet3_components import Component, kaldi_copy_component, read_component
from babelflow.kaldi.nnet3_descriptor import descriptor_append_offsets, parse_descriptor
from babelflow.kaldi.transition_model import TransitionModel

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "kaldi-fixtures"
MODELS = ["final.mdl", "final_adj.mdl", "final.handmade_priors.mdl"]


@pytest.fixture
def fx() -> Path:
    if not (FIXTURES / "nnet" / "0.raw").is_file():
        pytest.skip(f"Kaldi fixtures not found at {FIXTURES} (they live outside the repo, in /work/shared)")
    return FIXTURES


def nnet_bytes(nnet: Nnet, binary: bool) -> bytes:
    f = io.BytesIO()
    if binary:
        f.write(b"\0B")
    nnet.write(f, binary)
    return f.getvalue()


def am_bytes(am: AmNnetSimple, binary: bool) -> bytes:
    f = io.BytesIO()
    am.write(f, binary)
    return f.getvalue()


def assert_close_nnets(a: Nnet, b: Nnet) -> None:
    """Same structure; numbers equal to float32 text precision (7 significant digits)."""
    assert a.config_lines == b.config_lines
    assert [n for n, _ in a.components] == [n for n, _ in b.components]
    for (name, ca), (_, cb) in zip(a.components, b.components):
        assert ca.type == cb.type and [t for t, _ in ca.fields] == [t for t, _ in cb.fields], name
        for (tok, va), (_, vb) in zip(ca.fields, cb.fields):
            if isinstance(va, np.ndarray):
                assert va.shape == vb.shape, (name, tok)
                np.testing.assert_allclose(va, vb, rtol=6e-7, atol=1e-30, err_msg=f"{name} {tok}")
            elif isinstance(va, float):
                assert va == pytest.approx(vb, rel=6e-7), (name, tok)
            else:
                assert va == vb, (name, tok)


# ----------------------------------------------------------------------------- raw nnet
def test_raw_binary_and_text_round_trip(fx):
    raw, txt = (fx / "nnet" / "0.raw").read_bytes(), (fx / "nnet" / "0.raw.txt").read_bytes()
    nnet = read_nnet(fx / "nnet" / "0.raw")
    assert nnet_bytes(nnet, True) == raw
    assert nnet_bytes(nnet, False) == txt
    from_text = read_nnet(fx / "nnet" / "0.raw.txt")
    assert nnet_bytes(from_text, False) == txt
    assert_close_nnets(nnet, from_text)
    # a fresh net has no stats, so Kaldi's own re-write is lossless here
    assert nnet_bytes(nnet.kaldi_copy(), True) == raw


def test_raw_contents(fx):
    nnet = read_nnet(fx / "nnet" / "0.raw")
    assert nnet.input_nodes() == ["input"]
    assert nnet.output_nodes() == ["output-0", "output-1"]
    assert [(n, c.type) for n, c in nnet.components][:3] == [
        ("tdnn1.affine", "NaturalGradientAffineComponent"), ("tdnn1.relu", "RectifiedLinearComponent"),
        ("tdnn1.batchnorm", "BatchNormComponent")]
    assert {c.type for _, c in nnet.components} == {"NaturalGradientAffineComponent", "RectifiedLinearComponent",
                                                     "BatchNormComponent", "LogSoftmaxComponent"}
    aff = nnet.component("tdnn1.affine")
    assert aff.get("<LinearParams>").shape == (32, 120) and aff.get("LearningRate") == pytest.approx(0.001)
    assert [t for t, _ in aff.fields] == ["<LearningRate>", "<LinearParams>", "<BiasParams>", "<RankIn>",
                                         "<RankOut>", "<UpdatePeriod>", "<NumSamplesHistory>", "<Alpha>"]
    assert (aff.get("<RankIn>"), aff.get("<RankOut>")) == (20, 16)
    assert nnet.node_dim("output-0") == 18 and nnet.node_dim("output-1") == 12 and nnet.node_dim("input") == 40
    assert nnet.component("tdnn1.batchnorm").get("<TestMode>") is False


def test_write_files_atomically(fx, tmp_path):
    nnet = read_nnet(fx / "nnet" / "0.raw")
    write_nnet(tmp_path / "a.raw", nnet)
    write_nnet(tmp_path / "a.raw.txt", nnet, binary=False)
    assert (tmp_path / "a.raw").read_bytes() == (fx / "nnet" / "0.raw").read_bytes()
    assert (tmp_path / "a.raw.txt").read_bytes() == (fx / "nnet" / "0.raw.txt").read_bytes()
    am = read_am_nnet(fx / "am" / "lang0" / "final_adj.mdl")
    write_am_nnet(tmp_path / "m.mdl", am)
    assert (tmp_path / "m.mdl").read_bytes() == (fx / "am" / "lang0" / "final_adj.mdl").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.raw", "a.raw.txt", "m.mdl"]


# ----------------------------------------------------------------------------- .mdl
@pytest.mark.parametrize("name", MODELS)
def test_am_binary_round_trip_is_lossless(fx, name):
    path = fx / "am" / "lang0" / name
    am = read_am_nnet(path)
    assert am_bytes(am, True) == path.read_bytes()
    am.check()


@pytest.mark.parametrize("name", MODELS)
def test_am_text_file_round_trip(fx, name):
    txt = fx / "am" / "lang0" / (name + ".txt")
    am = read_am_nnet(txt)
    assert am_bytes(am, False) == txt.read_bytes()
    assert_close_nnets(am.nnet, read_am_nnet(fx / "am" / "lang0" / name).nnet.kaldi_copy())


@pytest.mark.parametrize("name", ["final.mdl", "final_adj.mdl"])
def test_am_text_matches_kaldi_copy(fx, name):
    """These .txt files are Kaldi re-writes of the binary models; Kaldi's read+write rescales
    nonlinearity and BatchNorm statistics, which kaldi_copy() reproduces bit for bit."""
    am = read_am_nnet(fx / "am" / "lang0" / name)
    assert am_bytes(am.kaldi_copy(), False) == (fx / "am" / "lang0" / (name + ".txt")).read_bytes()


def test_handmade_priors_model_binary_and_text(fx):
    """nnet3-am-adjust-priors wrote both forms straight from final.mdl: same data, so the
    plain text write of the binary gives the .txt, and both are kaldi_copy(final) + priors."""
    lang = fx / "am" / "lang0"
    hand = read_am_nnet(lang / "final.handmade_priors.mdl")
    assert am_bytes(hand, False) == (lang / "final.handmade_priors.mdl.txt").read_bytes()
    copy = read_am_nnet(lang / "final.mdl").kaldi_copy()
    copy.priors = hand.priors
    assert am_bytes(copy, True) == (lang / "final.handmade_priors.mdl").read_bytes()
    assert am_bytes(copy, False) == (lang / "final.handmade_priors.mdl.txt").read_bytes()


def test_kaldi_copy_is_not_lossless_and_matches_adjust_priors(fx):
    lang = fx / "am" / "lang0"
    final, adj = read_am_nnet(lang / "final.mdl"), read_am_nnet(lang / "final_adj.mdl")
    assert am_bytes(final, False) != (lang / "final.mdl.txt").read_bytes()  # stats differ in the 7th digit
    # nnet3-am-adjust-priors = read final.mdl, set priors, write: reproduced byte for byte
    copy = final.kaldi_copy()
    copy.priors = adj.priors
    assert am_bytes(copy, True) == (lang / "final_adj.mdl").read_bytes()
    relu = final.nnet.component("tdnn1.relu")
    assert not np.array_equal(kaldi_copy_component(relu).get("<ValueAvg>"), relu.get("<ValueAvg>"))


def test_priors_empty_and_set(fx):
    lang = fx / "am" / "lang0"
    assert read_am_nnet(lang / "final.mdl").priors.size == 0
    hand = read_am_nnet(lang / "final.handmade_priors.mdl").priors
    vec = np.array(re.findall(r"[-\d.e]+", (lang / "priors.handmade.vec.txt").read_text()), dtype=np.float64)
    np.testing.assert_allclose(hand, vec / vec.sum(), rtol=1e-6)
    adj = read_am_nnet(lang / "final_adj.mdl").priors
    assert adj.dtype == np.float32 and adj.shape == (18,) and adj.sum() == pytest.approx(1.0, abs=1e-5)


def test_read_nnet_from_mdl_skips_transition_model(fx):
    for name in ("final.mdl", "final.mdl.txt"):
        nnet = read_nnet(fx / "am" / "lang0" / name)
        assert nnet == read_am_nnet(fx / "am" / "lang0" / name).nnet
    assert "output" in nnet.output_nodes()


# ----------------------------------------------------------------------------- rename, context
def test_rename_node_matches_nnet3_copy_edits(fx):
    nnet = read_nnet(fx / "nnet" / "0.raw")
    nnet.rename_node("output-0", "output")
    am = read_am_nnet(fx / "am" / "lang0" / "final.mdl")
    assert nnet.config_lines == am.nnet.config_lines
    assert [n for n, _ in nnet.components] == [n for n, _ in am.nnet.components]
    assert nnet.output_nodes() == ["output", "output-1"]
    with pytest.raises(BabelflowError, match="no node called 'output-0'"):
        nnet.rename_node("output-0", "x")
    with pytest.raises(BabelflowError, match="exists"):
        nnet.rename_node("output", "output-1")
    with pytest.raises(BabelflowError, match="not a valid"):
        nnet.rename_node("output", "1bad")


def test_rename_updates_descriptors():
    nnet = toy_nnet()
    nnet.rename_node("L1.bn", "hidden")
    assert nnet.config_lines[5] == ("component-node name=out.affine component=out.affine "
                                    "input=Append(Offset(hidden, -1), hidden, Offset(hidden, 1))")
    assert "component-node name=hidden component=L1.bn input=L1.relu" in nnet.config_lines


def test_compute_context_matches_kaldi(fx):
    lang = fx / "am" / "lang0"
    info = (lang / "final.mdl.info.txt").read_text()
    left = int(re.search(r"^left-context: (\d+)$", info, re.M).group(1))
    right = int(re.search(r"^right-context: (\d+)$", info, re.M).group(1))
    for name in MODELS:
        am = read_am_nnet(lang / name)
        assert compute_context(am.nnet) == (am.left_context, am.right_context) == (left, right) == (4, 4)
    raw = read_nnet(fx / "nnet" / "0.raw")
    # nnet3-info prints no context for 0.raw (no node called 'output': not a "simple" nnet);
    # nnet.config says 4/4 and each head has it
    assert "left-context" not in (fx / "nnet" / "0.raw.info.txt").read_text()
    assert compute_context(raw) == compute_context(raw, "output-0") == compute_context(raw, "output-1") == (4, 4)


def test_compute_context_descriptor_kinds():
    nnet = toy_nnet()
    assert compute_context(nnet) == (3, 3)

    def ctx(desc: str) -> tuple[int, int]:
        lines = ["input-node name=input dim=4", "input-node name=ivector dim=2",
                 "input-node name=extra dim=4",
                 f"component-node name=n component=relu input={desc}", "output-node name=output input=n"]
        return compute_context(Nnet(lines, [("relu", relu_component(4))]))

    assert ctx("Sum(Offset(input, -2), Offset(input, 5))") == (2, 5)
    assert ctx("Append(input, IfDefined(Offset(input, -9)))") == (0, 0)
    assert ctx("Failover(Offset(input, 1), Offset(input, -4))") == (0, 1)
    assert ctx("Round(Offset(input, 1), 3)") == (1, 1)
    assert ctx("Sum(ReplaceIndex(ivector, t, 0), Offset(input, -1))") == (1, 0)
    assert ctx("Offset(Offset(input, 2), 3)") == (0, 5)


# ----------------------------------------------------------------------------- descriptors
@pytest.mark.parametrize("text, normal", [
    ("Append(Offset(input, -1), input, Offset(input, 1))", "Append(Offset(input, -1), input, Offset(input, 1))"),
    ("Append( Offset(input,-1) ,input )", "Append(Offset(input, -1), input)"),
    ("Offset(input, 0)", "input"),
    ("Offset(input, 2, 0)", "Offset(input, 2)"),
    ("Offset(input, 2, 1)", "Offset(input, 2, 1)"),
    ("Offset(Offset(input, 2), -2)", "input"),
    ("Offset(Append(a, b), 1)", "Append(Offset(a, 1), Offset(b, 1))"),
    ("Append(a, Append(b, c))", "Append(a, b, c)"),
    ("Sum(a, b, c)", "Sum(a, Sum(b, c))"),
    ("Sum(a)", "a"),
    ("Offset(Sum(a, b), 2)", "Sum(Offset(a, 2), Offset(b, 2))"),
    ("Scale(1.0, a)", "a"),
    ("Scale(0.5, Offset(a, 1))", "Offset(Scale(0.5, a), 1)"),
    ("Scale(0.333333333, a)", "Scale(0.333333, a)"),
    ("IfDefined(Offset(a, -3))", "IfDefined(Offset(a, -3))"),
    ("Append(input, ReplaceIndex(ivector, t, 0))", "Append(input, ReplaceIndex(ivector, t, 0))"),
    ("Append(a, Const(1.5, 10))", "Append(a, Const(1.5, 10))"),
    ("Failover(Offset(a, 1), a)", "Failover(Offset(a, 1), a)"),
    ("Round(a, 3)", "Round(a, 3)"),
])
def test_descriptor_normal_form(text, normal):
    assert str(parse_descriptor(text)) == normal
    assert str(parse_descriptor(normal)) == normal


@pytest.mark.parametrize("bad", ["", "Append(", "Offset(a)", "Offset(a, x)", "Append(a,, b)", "a b",
                                 "ReplaceIndex(a, n, 0)", "Failover(a)", "Const(1, 0)", "1abc"])
def test_descriptor_errors(bad):
    with pytest.raises(BabelflowError, match="descriptor"):
        parse_descriptor(bad)


def test_descriptor_append_offsets():
    assert descriptor_append_offsets("input", [-2, -1, 0, 1, 2], ivector="ivector") == (
        "Append(Offset(input, -2), Offset(input, -1), input, Offset(input, 1), Offset(input, 2), "
        "ReplaceIndex(ivector, t, 0))")
    assert descriptor_append_offsets("input", [0]) == "input"
    assert descriptor_append_offsets("tdnn1.batchnorm", [-3]) == "Offset(tdnn1.batchnorm, -3)"
    assert descriptor_append_offsets("x", [-1, 2]) == "Append(Offset(x, -1), Offset(x, 2))"
    for offs in ([-2, -1, 0, 1, 2], [0], [-1, 2]):
        text = descriptor_append_offsets("input", offs)
        assert str(parse_descriptor(text)) == text


# ----------------------------------------------------------------------------- builders
def toy_nnet(seed: int = 0) -> Nnet:
    rng = np.random.default_rng(seed)
    lines = [
        "input-node name=input dim=4",
        "input-node name=ivector dim=2",
        "component-node name=L1.affine component=L1.affine input="
        + descriptor_append_offsets("input", [-2, 0, 2], ivector="ivector"),
        "component-node name=L1.relu component=L1.relu input=L1.affine",
        "component-node name=L1.bn component=L1.bn input=L1.relu",
        "component-node name=out.affine component=out.affine input=" + descriptor_append_offsets("L1.bn", [-1, 0, 1]),
        "component-node name=out.log-softmax component=out.log-softmax input=out.affine",
        "output-node name=output input=out.log-softmax objective=linear",
    ]
    comps = [
        ("L1.affine", affine_component(rng.standard_normal((6, 14)), rng.standard_normal(6))),
        ("L1.relu", relu_component(6, self_repair_scale=1e-5)),
        ("L1.bn", batchnorm_component(6, rng.random(6), rng.random(6) + 0.1, count=123.5)),
        ("out.affine", affine_component(rng.standard_normal((9, 18)), rng.standard_normal(9), natural_gradient=False)),
        ("out.log-softmax", log_softmax_component(9)),
    ]
    return Nnet(lines, comps)


def test_builders_toy_net_text_round_trip():
    nnet = toy_nnet()
    assert nnet.node_dim("output") == 9 and nnet.node_dim("L1.affine") == 6
    for binary in (False, True):
        first = nnet_bytes(nnet, binary)
        again = Nnet.read(io.BytesIO(first[2:] if binary else first), binary)
        assert nnet_bytes(again, binary) == first
        if binary:
            assert again == nnet
    text = nnet_bytes(nnet, False).decode()
    assert "<NaturalGradientAffineComponent> <MaxChange> 0.75 <LearningRate> 0.001 <LinearParams>  [\n" in text
    assert "<RankIn> 7 <RankOut> 3 <UpdatePeriod> 4 <NumSamplesHistory> 2000 <Alpha> 4 </Natural" in text
    assert "<AffineComponent> <MaxChange> 0.75 <LearningRate> 0.001 <LinearParams>" in text
    assert "<NumDimsProcessed> 0 <SelfRepairScale> 1e-05 </RectifiedLinearComponent>" in text
    assert "<BatchNormComponent> <Dim> 6 <BlockDim> 6 <Epsilon> 0.001 <TargetRms> 1 <TestMode> T <Count> 123.5 " in text


def test_toy_am_round_trip():
    tm = TransitionModel.monophone(3)
    am = AmNnetSimple.from_nnet(tm, toy_nnet(), priors=np.full(9, 1 / 9))
    assert (am.left_context, am.right_context) == (3, 3)
    for binary in (True, False):
        data = am_bytes(am, binary)
        back = AmNnetSimple.read(io.BytesIO(data))
        assert am_bytes(back, binary) == data
    assert AmNnetSimple.read(io.BytesIO(am_bytes(am, True))) == am
    with pytest.raises(BabelflowError, match="priors have dim 5"):
        AmNnetSimple.from_nnet(tm, toy_nnet(), priors=np.ones(5))
    with pytest.raises(BabelflowError, match="pdfs"):
        AmNnetSimple.from_nnet(TransitionModel.monophone(2), toy_nnet())


def test_builders_match_kaldi_initialised_components(fx):
    nnet = read_nnet(fx / "nnet" / "0.raw")
    for name in ("tdnn1.affine", "tdnn2.affine", "output-0.affine", "output-1.affine"):
        c = nnet.component(name)
        built = affine_component(c.get("<LinearParams>"), c.get("<BiasParams>"), max_change=0)
        assert built == c, name
    assert relu_component(32) == nnet.component("tdnn1.relu")
    assert log_softmax_component(18) == nnet.component("output-0.log-softmax")
    norm = normalize_component(8, add_log_stddev=True)
    f = io.BytesIO()
    norm.write(f, False)
    assert f.getvalue() == b"<NormalizeComponent> <InputDim> 8 <TargetRms> 1 <AddLogStddev> T </NormalizeComponent> "
    assert read_component(io.BytesIO(f.getvalue()), False) == norm


def test_component_get_set():
    c = relu_component(4)
    assert c.get("Dim") == 4 and c.get("<Count>") == 0.0 and "<SelfRepairScale>" not in c
    c.set("<Dim>", 5)
    assert c.get("<Dim>") == 5
    with pytest.raises(KeyError):
        c.get("<Nope>")
    with pytest.raises(KeyError):
        c.set("<Nope>", 1)
    with pytest.raises(ValueError):
        Component("FancyComponent", [])
    with pytest.raises(ValueError):
        affine_component(np.zeros((3, 2)), np.zeros(2))


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", ["nnet/0.raw", "nnet/0.raw.txt", "am/lang0/final.mdl", "am/lang0/final_adj.mdl.txt"])
def test_truncated_files(fx, tmp_path, name):
    data = (fx / name).read_bytes()
    for cut in (0, 1, 5, 40, len(data) // 3, len(data) // 2, len(data) - 30):
        p = tmp_path / "cut"
        p.write_bytes(data[:cut])
        with pytest.raises(BabelflowError, match=re.escape(str(p))):
            read_am_nnet(p) if name.startswith("am") else read_nnet(p)


def test_not_a_kaldi_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello world\n")
    with pytest.raises(BabelflowError, match=r"notes\.txt.*<Nnet3>"):
        read_nnet(p)
    with pytest.raises(BabelflowError, match=r"notes\.txt.*TransitionModel"):
        read_am_nnet(p)
    p.write_bytes(b"\0Bjunk")
    with pytest.raises(BabelflowError, match="notes.txt"):
        read_nnet(p)
    with pytest.raises(BabelflowError, match="file not found"):
        read_nnet(tmp_path / "missing.raw")


def test_unknown_component_type_in_text(fx, tmp_path):
    text = (fx / "nnet" / "0.raw.txt").read_text()
    p = tmp_path / "bad.raw.txt"
    p.write_text(text.replace("RectifiedLinearComponent>", "FancyComponent>"))
    with pytest.raises(BabelflowError,
                       match=r"bad\.raw\.txt.*'tdnn1\.relu'.*unknown or unsupported component type <FancyComponent>"):
        read_nnet(p)
    p.write_text(text.replace("<RankOut>", "<RankOutt>", 1))
    with pytest.raises(BabelflowError, match=r"bad\.raw\.txt.*'tdnn1\.affine'.*unexpected token '<RankOutt>'"):
        read_nnet(p)
    p.write_text(text.replace("input=tdnn1.affine", "input=tdnn9.affine"))
    with pytest.raises(BabelflowError, match=r"bad\.raw\.txt.*undefined node 'tdnn9\.affine'"):
        read_nnet(p)
    p.write_text(text.replace("input-node name=input dim=40", "input-node name=input dimm=40"))
    with pytest.raises(BabelflowError, match=r"bad\.raw\.txt.*unknown dimm"):
        read_nnet(p)


def test_recurrent_descriptors():
    def net(desc: str) -> Nnet:
        return Nnet(["input-node name=input dim=4", f"component-node name=r component=relu input={desc}",
                     "output-node name=output input=r"], [("relu", relu_component(4))])

    ok = net("Sum(input, IfDefined(Offset(r, -1)))")
    assert compute_context(ok) == (0, 0) and ok.node_dim("output") == 4
    with pytest.raises(BabelflowError, match="depends on itself"):
        compute_context(net("Sum(input, Offset(r, -1))"))
    assert net("Sum(Offset(r, -1), input)").node_dim("output") == 4  # component dims end the recursion


def test_other_component_types_round_trip():
    """Types the fixtures lack (formats from the Kaldi sources): pair-valued and int-vector tokens."""
    rng = np.random.default_rng(1)
    tdnn = Component("TdnnComponent", [
        ("<MaxChange>", 0.75), ("<LearningRate>", 0.002), ("<TimeOffsets>", [-1, 0, 1]),
        ("<LinearParams>", rng.standard_normal((5, 12))), ("<BiasParams>", rng.standard_normal(5)),
        ("<OrthonormalConstraint>", 0.0), ("<UseNaturalGradient>", True), ("<NumSamplesHistory>", 2000),
        ("<AlphaInOut>", (4, 4)), ("<RankInOut>", (10, 3))])
    drop = Component("DropoutComponent", [("<Dim>", 5), ("<DropoutProportion>", 0.5), ("<DropoutPerFrame>", False),
                                          ("<TestMode>", False)])
    for comp in (tdnn, drop):
        for binary in (True, False):
            f = io.BytesIO()
            comp.write(f, binary)
            back = read_component(io.BytesIO(f.getvalue()), binary)
            g = io.BytesIO()
            back.write(g, binary)
            assert g.getvalue() == f.getvalue()
            if binary:
                assert back == comp
    f = io.BytesIO()
    tdnn.write(f, False)
    assert b"<TimeOffsets> [ -1 0 1 ]\n<LinearParams>  [" in f.getvalue()
    assert b"<AlphaInOut> 4 4 <RankInOut> 10 3 </TdnnComponent> " in f.getvalue()
    nnet = Nnet(["input-node name=input dim=4", "component-node name=t component=t input=Offset(input, -2)",
                 "output-node name=output input=t"], [("t", tdnn)])
    assert compute_context(nnet) == (3, 0) and nnet.node_dim("output") == 5
