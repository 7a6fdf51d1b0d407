"""Kaldi skips and counts where it must; babelflow lists every skipped key with its reason.

A segment past its recording (known only once a pipe has run) is skipped by the features
step, an utterance without an alignment or with a length mismatch by the egs step; each
step's ``skipped.tsv`` names them, and the run goes on.
"""

from __future__ import annotations

from babelflow.data.split import prepare_data_dir
from babelflow.egs.alignments import prepare_pdf_alignments
from babelflow.egs.make import TaskSource, egs_job, finalize_egs_dir
from babelflow.features import FeatureConfig
from babelflow.io import read_skipped
from babelflow.kaldi.alignments import read_pdf_alignments, write_int_vectors
from babelflow.make_feats import feats_job, finalize_feats_dir

from .test_datadir import write_lines, write_wav
from .test_egs import OPTS


def test_the_features_step_lists_segments_a_pipe_showed_to_be_past_their_recording(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # wav.scp paths are relative to where the workflow runs, as in Kaldi
    d = tmp_path / "data"
    d.mkdir()
    write_lines(d / "wav.scp", [f"r{i} cat {write_wav(tmp_path / f'r{i}.wav', secs=1.0).name} |" for i in (1, 2)])
    write_lines(d / "segments", ["a r1 0.00 0.50", "b r1 0.50 1.70", "c r2 0.00 1.00"])
    write_lines(d / "utt2spk", ["a s1", "b s1", "c s2"])
    write_lines(d / "spk2utt", ["s1 a b", "s2 c"])
    prepare_data_dir(d, tmp_path / "d", 1)  # a pipe never runs while validating: b is still there
    cfg = FeatureConfig.build("fbank", None, {"num_mel_bins": 23, "dither": 0})
    feats_job(cfg, tmp_path / "d" / "split1" / "1", tmp_path / "f", 1, progress=False)
    info = finalize_feats_dir(cfg, tmp_path / "d", tmp_path / "f", 1, "--norm-means=false --norm-vars=false")
    assert info["num_utts"] == 2 and info["num_skipped"] == 1
    skipped = read_skipped(tmp_path / "f" / "skipped.tsv")
    assert list(skipped) == ["b"] and "ends 0.700 s after its recording r1 (max-overshoot 0.5)" in skipped["b"]
    assert "segments:2:" in skipped["b"]


def test_the_egs_step_lists_each_skipped_utterance_with_its_reason(tiny_corpus, tiny_features, tmp_path):
    ali = dict(read_pdf_alignments(str(tiny_corpus / "en" / "ali")))
    utts = sorted(ali)
    gone, short = utts[0], utts[1]
    ali.pop(gone)
    ali[short] = ali[short][:-10]  # 10 frames fewer than the features: beyond the tolerance of 2
    write_int_vectors(f"ark,scp:{tmp_path / 'pdf.ark'},{tmp_path / 'pdf.scp'}", sorted(ali.items()))
    out = tmp_path / "egs"
    src = TaskSource("en", "frame", [("en", tiny_features / "data" / "en", tiny_features / "feats" / "en")], nj=2)
    prepare_pdf_alignments(f"scp:{tmp_path / 'pdf.scp'}", out)
    for a in (1, 2):
        egs_job(src, a, out, OPTS, progress=False)
    finalize_egs_dir(src, out, OPTS)
    skipped = read_skipped(out / "skipped.tsv")
    assert skipped[gone] == "no_alignment"
    assert skipped[short].startswith("length_mismatch (alignment ") and "tolerance 2" in skipped[short]
    assert len(skipped) == 2
