"""The espeak-ng demo corpus: Kaldi layout, true phone timings, determinism."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from babelflow.data.datadir import DataDir
from babelflow.demo.corpus import DemoConfig, enforce_min_duration, frame_labels, generate_corpus
from babelflow.features import FeatureConfig, FeatureExtractor, iter_audio
from babelflow.kaldi.alignments import AlignmentDir
from babelflow.kaldi.transition_model import read_transition_model
from babelflow.kaldi.tree import monophone_tree, read_tree


def _digest(root):
    h = hashlib.md5()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_labels(tiny_corpus):
    for lang in ("en", "de"):
        data = DataDir.load(tiny_corpus / lang / "data")
        assert len(data.utts) == 16
        assert set(data.labels) >= {"lang", "voice", "gender", "rate"}
        assert set(data.labels["lang"].values()) == {lang}
        assert all(data.labels["voice"][u] == data.utt2spk[u] for u in data.utts)
        assert set(data.labels["gender"].values()) == {"m", "f"}
        ali = AlignmentDir(tiny_corpus / lang / "ali")
        assert (tiny_corpus / lang / "ali" / "num_jobs").read_text().strip() == "2"
        phones = (tiny_corpus / lang / "ali" / "phones.txt").read_text().split("\n")
        assert phones[:2] == ["<eps> 0", "sil 1"]
        assert ali.num_pdfs == 3 * (len([p for p in phones if p]) - 1)


def test_alignments_match_feature_frames(tiny_corpus):
    """The phone timings become one transition-id per feature frame (within 1 frame)."""
    extract = FeatureExtractor(FeatureConfig.build("fbank", None, {"num_mel_bins": 40, "dither": 0}))
    for lang in ("en", "de"):
        nframes = {k: extract(s, r, k).shape[0]
                   for k, r, s in iter_audio(f"scp:{tiny_corpus / lang / 'data' / 'wav.scp'}")}
        ali = AlignmentDir(tiny_corpus / lang / "ali")
        pdfs = dict(ali.pdf_alignments())
        assert set(pdfs) == set(nframes)
        for utt, p in pdfs.items():
            assert abs(len(p) - nframes[utt]) <= 1, utt
            assert p.min() >= 0 and p.max() < ali.num_pdfs
            # silence (phone 1 -> pdfs 0..2) at both ends: the padding is labelled sil
            assert p[0] in (0, 1, 2) and p[-1] in (0, 1, 2)
            # every phone occupies its 3 states in order (a valid left-to-right path)
            states = p % 3
            starts = np.flatnonzero(np.diff(p) != 0) + 1
            assert states[0] == 0 and states[-1] == 2
            for s in starts:
                prev, cur = states[s - 1], states[s]
                assert (prev, cur) in ((0, 1), (1, 2), (2, 0)), (utt, s, p[s - 1], p[s])


def test_ali_dir_has_the_monophone_tree(tiny_corpus):
    """``tree`` beside ``final.mdl`` (as mkgraph.sh needs) maps every (phone, state) to the model's pdf."""
    for lang in ("en", "de"):
        ali = tiny_corpus / lang / "ali"
        tm, tree = read_transition_model(ali / "final.mdl"), read_tree(ali / "tree")
        assert (tree.N, tree.P, tree.num_pdfs) == (1, 0, tm.num_pdfs)
        assert tree == monophone_tree(tm.num_phones, 3)
        for phone, state, fwd_pdf, loop_pdf in tm.tuples:
            assert tree.pdf(phone, state) == fwd_pdf == loop_pdf == 3 * (phone - 1) + state
        assert sorted(t[2] for t in tm.tuples) == list(range(tm.num_pdfs))


def test_phone_timings_follow_espeak_segments():
    spans = [("h", 0, 1600), ("@", 1600, 3200), ("_:", 3200, 4000), ("l", 4000, 8000)]
    labels = frame_labels(spans, 8000)
    assert len(labels) == 1 + (8000 - 400) // 160
    assert labels[0] == "h" and labels[8] == "h" and labels[9] == "@"  # centres 1480, 1640
    assert labels[19] == "sil" and labels[-1] == "l"


def test_min_duration_runs():
    # the longer neighbour donates
    assert enforce_min_duration(["a"] * 5 + ["b"] + ["c"] * 6) == [("a", 5), ("b", 3), ("c", 4)]
    runs = enforce_min_duration(["a"] * 3 + ["b"] + ["c"] * 3)  # no spare frames: b is absorbed
    assert sum(n for _, n in runs) == 7 and all(n >= 3 for _, n in runs) and "b" not in [p for p, _ in runs]


def test_deterministic_for_a_seed(tmp_path, tiny_corpus):
    cfg = DemoConfig(langs={"en": "en-us", "de": "de"}, utts_per_lang=16, seed=3)
    generate_corpus(tmp_path / "again", cfg, jobs=1)  # other parallelism, same bytes
    for lang in ("en", "de"):
        a = _digest(tmp_path / "again" / lang / "ali") + _digest(tmp_path / "again" / lang / "wav")
        b = _digest(tiny_corpus / lang / "ali") + _digest(tiny_corpus / lang / "wav")
        assert a == b, lang
    other = DemoConfig(langs={"en": "en-us"}, utts_per_lang=16, seed=4)
    generate_corpus(tmp_path / "other", other)
    assert _digest(tmp_path / "other" / "en" / "wav") != _digest(tiny_corpus / "en" / "wav")


def test_unknown_voice_is_an_error(tmp_path):
    from babelflow.errors import BabelflowError

    cfg = DemoConfig(langs={"xx": "no-such-voice"}, utts_per_lang=8)
    with pytest.raises(BabelflowError, match="no voice 'no-such-voice"):
        generate_corpus(tmp_path, cfg)
    assert not (tmp_path / "xx").exists()
