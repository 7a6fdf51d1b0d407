"""Kaldi's ``tree`` (ContextDependency): byte-exact read/write against real Kaldi output, gmm-init-mono's tree."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from babelflow.errors import BabelflowError
from babelflow.kaldi.basic_io import KaldiFormatError
from babelflow.kaldi.hmm_topology import read_topology
from babelflow.kaldi.transition_model import TransitionModel, read_transition_model
from babelflow.kaldi.tree import (
    ConstantEventMap,
    ContextDependency,
    SplitEventMap,
    TableEventMap,
    monophone_tree,
    read_tree,
    tree_from_topology,
    write_tree,
)


@pytest.fixture
def lang0(kaldi_fixtures) -> Path:
    return kaldi_fixtures / "lang0"


def _bytes(tree: ContextDependency, binary: bool) -> bytes:
    buf = io.BytesIO()
    tree.write(buf, binary)
    return buf.getvalue()


def _read(data: bytes) -> ContextDependency:
    return ContextDependency.read(io.BytesIO(data))


def _assert_matches_transition_model(tree: ContextDependency, tm: TransitionModel) -> None:
    """Every (phone, pdf-class) of every transition-state maps to the TransitionModel's pdfs, and all pdfs occur."""
    assert tree.num_pdfs == tm.num_pdfs
    seen = set()
    for phone, hmm_state, fwd_pdf, loop_pdf in tm.tuples:
        state = tm.topology.entry_for_phone(phone)[hmm_state]
        assert tree.pdf([phone], state.forward_pdf_class) == fwd_pdf, (phone, hmm_state)
        assert tree.pdf(phone, state.self_loop_pdf_class) == loop_pdf, (phone, hmm_state)
        seen.update((fwd_pdf, loop_pdf))
    assert seen == set(range(tm.num_pdfs))


# --- against real Kaldi output (lang0: gmm-init-mono topo 13 0.mdl tree) ---------------------------------------

def test_fixture_binary_and_text_round_trip(lang0, tmp_path):
    binary, text = (lang0 / "tree").read_bytes(), (lang0 / "tree.txt").read_bytes()
    tree = read_tree(lang0 / "tree")
    assert read_tree(lang0 / "tree.txt") == tree
    assert (tree.N, tree.P, tree.num_pdfs) == (1, 0, 18)
    assert _bytes(tree, binary=True) == binary and _bytes(tree, binary=False) == text
    write_tree(tmp_path / "tree", tree)
    write_tree(tmp_path / "tree.txt", tree, binary=False)
    assert (tmp_path / "tree").read_bytes() == binary and (tmp_path / "tree.txt").read_bytes() == text
    info = dict(line.split(" ", 1) for line in (lang0 / "tree_info.txt").read_text().splitlines())
    assert info == {"num-pdfs": str(tree.num_pdfs), "context-width": str(tree.context_width),
                    "central-position": str(tree.central_position)}


def test_monophone_tree_is_gmm_init_monos(lang0):
    topo = read_topology(lang0 / "topo")
    assert all(topo.num_pdf_classes(p) == 3 for p in range(1, 7))  # lang0: one topology for all 6 phones
    expected = (lang0 / "tree").read_bytes()
    assert _bytes(monophone_tree(6, 3), binary=True) == expected
    assert _bytes(tree_from_topology(topo), binary=True) == expected
    assert _bytes(tree_from_topology(topo), binary=False) == (lang0 / "tree.txt").read_bytes()


def test_lookup_agrees_with_fixture_transition_model(lang0):
    tm = read_transition_model(lang0 / "final.mdl")
    tree = read_tree(lang0 / "tree")
    _assert_matches_transition_model(tree, tm)
    for phone in range(1, 7):
        for pdf_class in range(3):
            assert tree.pdf(phone, pdf_class) == 3 * (phone - 1) + pdf_class


# --- no fixtures needed ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_phones", [1, 2, 7, 40])
def test_monophone_tree_matches_monophone_transition_model(num_phones):
    tm = TransitionModel.monophone(num_phones)
    tree = monophone_tree(num_phones)
    assert tree == tree_from_topology(tm.topology)
    _assert_matches_transition_model(tree, tm)


def test_per_phone_pdf_class_counts():
    tree = monophone_tree(3, [5, 3, 1])  # e.g. a 5-state silence
    assert [tree.pdf(1, c) for c in range(5)] == [0, 1, 2, 3, 4]
    assert [tree.pdf(2, c) for c in range(3)] == [5, 6, 7] and tree.pdf(3, 0) == 8
    assert tree.num_pdfs == 9
    assert tree.compute(2, 3) is None and tree.compute(4, 0) is None and tree.compute(0, 0) is None
    with pytest.raises(BabelflowError, match="no pdf"):
        tree.pdf(3, 1)
    with pytest.raises(BabelflowError, match="context"):
        tree.pdf([1, 2], 0)


def test_shared_phones_split_event_map_bytes():
    """--shared-phones makes SE nodes (GetStubMap's halving); their layout follows event-map.cc."""
    topo = TransitionModel.monophone(3).topology
    tree = tree_from_topology(topo, shared_phones=[[1], [2, 3]])
    stub = lambda a: TableEventMap(-1, tuple(ConstantEventMap(i) for i in range(a, a + 3)))
    assert tree.to_pdf == SplitEventMap(0, (1,), stub(0), stub(3))
    assert [tree.pdf(p, 1) for p in (1, 2, 3)] == [1, 4, 4]
    text = _bytes(tree, binary=False)
    assert text == (b"ContextDependency 1 0 ToPdf SE 0 [ 1 ]\n{ TE -1 3 ( CE 0 CE 1 CE 2 ) \n"
                    b"TE -1 3 ( CE 3 CE 4 CE 5 ) \n} \nEndContextDependency ")
    binary = _bytes(tree, binary=True)
    te = lambda a: b"TE \x04\xff\xff\xff\xff\xfc\x03\x00\x00\x00( " + b"".join(
        b"CE \x04" + bytes([i]) + b"\x00\x00\x00" for i in range(a, a + 3)) + b") "
    assert binary == (b"\0BContextDependency \x04\x01\x00\x00\x00\x04\x00\x00\x00\x00ToPdf SE \x04\x00\x00\x00\x00"
                      b"\x04\x01\x00\x00\x00\x01\x00\x00\x00{ " + te(0) + te(3) + b"} EndContextDependency ")
    assert _read(binary) == tree and _read(text) == tree


def test_null_leaves_and_back_compat_to_length():
    tree = ContextDependency(3, 1, TableEventMap(1, (None, ConstantEventMap(7), None)))
    for binary in (True, False):
        assert _read(_bytes(tree, binary)) == tree
    assert tree.pdf([0, 1, 5], 2) == 7 and tree.compute([1, 2, 1], 0) is None
    old = b"ContextDependency 3 1 ToLength CE 3 ToPdf TE 1 3 ( NULL CE 7 NULL ) EndContextDependency "
    assert _read(old) == tree


def test_malformed_trees_are_errors(tmp_path):
    good = _bytes(monophone_tree(2), binary=True)
    for bad in (good[:-30], good.replace(b"ToPdf", b"ToPdX"), good.replace(b"TE \x04\x00", b"TX \x04\x00"),
                good.replace(b"\xfc\x03", b"\x04\x03"), b"ContextDependency 1 0 ToPdf SE 0 [ 1 ] { CE 0 NULL } "
                b"EndContextDependency ", b"ContextDependency 1 1 ToPdf NULL EndContextDependency "):
        with pytest.raises(KaldiFormatError):
            _read(bad)
    (tmp_path / "tree").write_bytes(good[:-30])
    with pytest.raises(BabelflowError, match=r"tree.*not a readable Kaldi tree"):
        read_tree(tmp_path / "tree")
