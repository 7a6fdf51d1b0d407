"""TransitionModel / HmmTopology against files written by real Kaldi binaries."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from babelflow.errors import BabelflowError
from babelflow.kaldi import basic_io as bio
from babelflow.kaldi.hmm_topology import HmmTopology, read_topology
from babelflow.kaldi.transition_model import TransitionModel, read_transition_model, write_transition_model


@pytest.fixture
def lang0(kaldi_fixtures) -> Path:
    return kaldi_fixtures / "lang0"


def tm_end(path: Path) -> int:
    """Byte offset where the TransitionModel at the head of a binary model ends."""
    with open(path, "rb") as f:
        TransitionModel.read(f)
        return f.tell()


def test_binary_and_text_heads_agree(lang0):
    binary = read_transition_model(lang0 / "final.mdl")
    full_text = read_transition_model(lang0 / "0.mdl.txt")
    alone = read_transition_model(lang0 / "0.trans_mdl.txt")
    assert full_text == alone  # the head of the full text model is the standalone one
    assert binary.topology == alone.topology
    assert binary.tuples == alone.tuples
    np.testing.assert_allclose(binary.log_probs, alone.log_probs, atol=1e-6)
    lines = (lang0 / "hmm_info.txt").read_text().splitlines()
    info = dict(re.match(r"number of (.+?) (\d+)$", line).groups() for line in lines)
    assert binary.num_phones == int(info["phones"])
    assert binary.num_pdfs == int(info["pdfs"])
    assert binary.num_transition_ids == int(info["transition-ids"])
    assert binary.num_transition_states == int(info["transition-states"])
    assert binary.topology == read_topology(lang0 / "topo")


@pytest.mark.parametrize("source", ["final.mdl", "0.trans_mdl.txt"])
def test_text_write_is_byte_exact(lang0, source):
    buf = io.BytesIO()
    read_transition_model(lang0 / source).write(buf, binary=False)
    assert buf.getvalue() == (lang0 / "0.trans_mdl.txt").read_bytes()


@pytest.mark.parametrize("model", ["final.mdl", "0.mdl"])
def test_binary_write_is_byte_exact(lang0, model, tmp_path):
    raw = (lang0 / model).read_bytes()
    end = tm_end(lang0 / model)
    assert raw[end:].startswith(b"<DIMENSION> ")  # the GMM follows, so `end` really is the object's end
    buf = io.BytesIO()
    read_transition_model(lang0 / model).write(buf)  # binary=True: "\0B" header included
    assert buf.getvalue() == raw[:end]
    write_transition_model(tmp_path / "tm.mdl", read_transition_model(lang0 / model))
    assert (tmp_path / "tm.mdl").read_bytes() == raw[:end]
    assert [p.name for p in tmp_path.iterdir()] == ["tm.mdl"]  # no temp file left behind


def test_monophone_equals_gmm_init_mono(lang0):
    fixture = read_transition_model(lang0 / "final.mdl")
    mono = TransitionModel.monophone(6)
    assert mono.topology == fixture.topology
    assert mono.tuples == fixture.tuples
    np.testing.assert_allclose(mono.log_probs, fixture.log_probs, atol=1e-6)
    buf = io.BytesIO()
    mono.write(buf)
    assert buf.getvalue() == (lang0 / "final.mdl").read_bytes()[: tm_end(lang0 / "final.mdl")]


def test_tables_match_show_transitions(lang0):
    tm = read_transition_model(lang0 / "final.mdl")
    names = {sym: int(i) for sym, i in (l.split() for l in (lang0 / "phones.txt").read_text().splitlines())}
    id2pdf, id2phone = tm.transition_id_to_pdf(), tm.transition_id_to_phone()
    id2state, loops = tm.transition_id_to_hmm_state(), tm.transition_id_is_self_loop()
    assert id2pdf.dtype == np.int32 and id2pdf.shape == (37,) and id2pdf[0] == -1
    seen = 0
    for line in (lang0 / "show_transitions.txt").read_text().splitlines():
        if m := re.match(r"Transition-state \d+: phone = (\S+) hmm-state = (\d+) pdf = (\d+)", line):
            phone, hmm_state, pdf = names[m[1]], int(m[2]), int(m[3])
        elif m := re.match(r" Transition-id = (\d+) p = ([\d.]+) \[(self-loop|(\d+) -> (\d+))\]", line):
            tid, seen = int(m[1]), seen + 1
            assert (id2pdf[tid], id2phone[tid], id2state[tid]) == (pdf, phone, hmm_state)
            assert loops[tid] == (m[3] == "self-loop")
            dst = hmm_state if m[3] == "self-loop" else int(m[5])
            assert tm.transition_id(phone, hmm_state, dst) == tid
            assert np.exp(tm.log_probs[tid]) == pytest.approx(float(m[2]), abs=1e-6)
    assert seen == tm.num_transition_ids == 36
    with pytest.raises(BabelflowError, match="no arc 0 -> 2"):
        tm.transition_id(1, 0, 2)


def chain_topology() -> HmmTopology:
    """Chain-style (non-HMM) topology: one emitting state with distinct self-loop pdf class."""
    return HmmTopology.from_entries([([1, 2], [(0, 1, [(0, 0.5), (1, 0.5)]), (-1, -1, [])])])


def test_non_hmm_topology_round_trips():
    topo = chain_topology()
    assert not topo.is_hmm()
    tm = TransitionModel.from_topology(topo, [(2, 0, 2, 3), (1, 0, 0, 1)])
    assert tm.tuples == [(1, 0, 0, 1), (2, 0, 2, 3)]  # sorted, as Kaldi numbers transition-states
    assert tm.transition_id_to_pdf().tolist() == [-1, 1, 0, 3, 2]  # self-loop -> self-loop pdf
    assert tm.num_pdfs == 4
    text, binary = io.BytesIO(), io.BytesIO()
    tm.write(text, binary=False)
    tm.write(binary, binary=True)
    assert (b"<State> 0 <ForwardPdfClass> 0 <SelfLoopPdfClass> 1 <Transition> 0 0.5 <Transition> 1 0.5 </State> \n"
            in text.getvalue())
    assert b"<Tuples> 2 \n1 0 0 1 \n2 0 2 3 \n</Tuples> \n" in text.getvalue()
    # binary: phones, phone2idx, then the -1 marker before the entry count
    assert b"\x04\xff\xff\xff\xff\x04\x01\x00\x00\x00\x04\x02\x00\x00\x00" in binary.getvalue()
    for buf in (text, binary):
        buf.seek(0)
        assert TransitionModel.read(buf) == tm


def test_topology_text_without_trailing_spaces_parses():
    text = (b"<Topology>\n<TopologyEntry>\n<ForPhones>\n1 2\n</ForPhones>\n"
            b"<State> 0 <ForwardPdfClass> 0 <SelfLoopPdfClass> 1 <Transition> 0 0.5 <Transition> 1 0.5 </State>\n"
            b"<State> 1 </State>\n</TopologyEntry>\n</Topology>\n")
    assert HmmTopology.read(io.BytesIO(text), binary=False) == chain_topology()


@pytest.mark.parametrize("bad, match", [
    ([([1], [(0, 0, [(0, 1.0)])])], "last state"),
    ([([1], [(0, 0, [(0, 0.5), (1, 0.5)]), (-1, -1, [(1, 1.0)])])], "last state"),
    ([([1], [(1, 1, [(0, 0.5), (2, 0.5)]), (0, 0, [(2, 1.0)]), (-1, -1, [])])], "incoming"),
    ([([1], [(0, 0, [(0, 0.5), (1, 0.5)]), (-1, -1, [])]), ([1], [(0, 0, [(1, 1.0)]), (-1, -1, [])])], "more than one"),
    ([([1], [(1, 1, [(0, 0.5), (1, 0.5)]), (-1, -1, [])])], "contiguous"),
])
def test_invalid_topologies_are_rejected(bad, match):
    with pytest.raises(BabelflowError, match=match):
        HmmTopology.from_entries(bad)


def test_truncated_model_names_the_file(lang0, tmp_path):
    for n in (1, 10, 200, tm_end(lang0 / "final.mdl") - 3):
        bad = tmp_path / f"trunc{n}.mdl"
        bad.write_bytes((lang0 / "final.mdl").read_bytes()[:n])
        with pytest.raises(BabelflowError, match=re.escape(str(bad))):
            read_transition_model(bad)
    text = tmp_path / "trunc.txt"
    text.write_bytes((lang0 / "0.trans_mdl.txt").read_bytes()[:500])
    with pytest.raises(BabelflowError, match=f"{re.escape(str(text))}.*end of file"):
        read_transition_model(text)


@pytest.mark.parametrize("content", [b"hello world\n", b"\0B<Nnet3> \n", b"", b"\0X\x01\x02", bytes(range(256)) * 8])
def test_not_a_model_names_the_file(tmp_path, content):
    bad = tmp_path / "not_a_model.mdl"
    bad.write_bytes(content)
    with pytest.raises(BabelflowError, match=re.escape(str(bad))):
        read_transition_model(bad)


def test_wrong_first_token_is_reported(tmp_path):
    bad = tmp_path / "raw.mdl"
    bad.write_bytes(b"\0B<Nnet3> \ninput-node name=input dim=13\n")
    msg = r"raw\.mdl: not a readable Kaldi model: expected token <TransitionModel>, got '<Nnet3>'"
    with pytest.raises(BabelflowError, match=msg):
        read_transition_model(bad)
    with pytest.raises(BabelflowError, match="file not found"):
        read_transition_model(tmp_path / "missing.mdl")


def test_basic_io_primitives():
    buf = io.BytesIO()
    bio.write_double(buf, True, 0.1)
    bio.write_float(buf, True, 0.1)
    bio.write_bool(buf, True, True)
    bio.write_token(buf, True, "<X>")
    bio.write_int32_vector(buf, True, [3, -1])
    bio.write_float_vector(buf, True, np.array([1.5, -2.0], dtype=np.float64))
    buf.seek(0)
    assert bio.read_float(buf, True) == np.float32(0.1)  # a double where a float is expected is accepted
    assert bio.read_double(buf, True) == pytest.approx(0.1, abs=1e-8)  # and the other way round
    assert bio.read_bool(buf, True) is True
    bio.expect_token(buf, True, "<X>")
    assert bio.read_int32_vector(buf, True) == [3, -1]
    vec = bio.read_float_vector(buf, True)
    assert vec.dtype == np.float32 and vec.tolist() == [1.5, -2.0]
    text = io.BytesIO()
    bio.write_float_vector(text, False, np.array([np.float32(np.log(0.75)), 0.0, 1e-10], dtype=np.float32))
    bio.write_int32_vector(text, False, [1, 2])
    assert text.getvalue() == b" [ -0.2876821 0 1e-10 ]\n[ 1 2 ]\n"
    text.seek(0)
    assert bio.read_float_vector(text, False).tolist() == pytest.approx([-0.2876821, 0.0, 1e-10])
    assert bio.read_int32_vector(text, False) == [1, 2]
    with pytest.raises(BabelflowError, match="size byte 8"):
        bio.read_int32(io.BytesIO(b"\x08" + bytes(8)), True)
