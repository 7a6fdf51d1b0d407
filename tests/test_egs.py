"""The egs step: Kaldi's chunking and weights, context slicing, held-out sets, skips, errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from babelflow.egs.alignments import prepare_pdf_alignments
from babelflow.egs.chunking import kaldi_chunks, utterance_chunks
from babelflow.egs.make import EgsOptions, TaskSource, egs_job, finalize_egs_dir
from babelflow.egs.reader import EgsDir
from babelflow.errors import BabelflowError


def test_chunking_matches_kaldi_fixture_keys(kaldi_fixtures):
    """nnet3-get-egs cut en1 (103 frames) at these frames; en2 (122) into 15 chunks with gaps."""
    text = (kaldi_fixtures / "egs" / "lang0" / "egs.1.txt").read_text()
    keys = re.findall(r"(\S+) <Nnet3Eg>", text)
    kaldi_en1 = [int(k.split("-")[1]) for k in keys if k.startswith("en1-")]
    starts, weights = kaldi_chunks(103, 8, np.random.default_rng(0))
    assert starts.tolist() == kaldi_en1
    assert weights[0, 7] == 0.5 and weights[1, 0] == 0.5 and weights[1, 1] == 1.0  # frame 7 is in 2 chunks
    for seed in range(5):
        starts, weights = kaldi_chunks(122, 8, np.random.default_rng(seed))
        assert len(starts) == len([k for k in keys if k.startswith("en2-")]) == 15
        assert (np.diff(starts) >= 8).all() and starts[-1] + 8 <= 122 and (weights == 1).all()
    assert len(kaldi_chunks(7, 8, np.random.default_rng(0))[0]) == 0  # shorter than a chunk: dropped


def test_utterance_chunks():
    rng = np.random.default_rng(0)
    starts, sizes = utterance_chunks(1000, "random", 100, 300, rng)
    assert (sizes >= 100).all() and (sizes <= 300).all() and (starts[1:] == np.cumsum(sizes)[:-1]).all()
    assert utterance_chunks(80, "random", 100, 300, rng)[1].tolist() == [80]
    assert utterance_chunks(1000, "whole", 100, 300, rng)[1].tolist() == [1000]


OPTS = EgsOptions(num_valid_utts=300, valid_fraction=0.2, left_context=4, right_context=3, dtype="float32")


def _frame_task(tiny_corpus, work, out, lang="en", opts=OPTS, ali=None):
    src = TaskSource(lang, "frame", [(lang, work / "data" / lang, work / "feats" / lang)], nj=2)
    prepare_pdf_alignments(str(ali or tiny_corpus / lang / "ali"), out)
    for a in (1, 2):
        egs_job(src, a, out, opts, progress=False)
    return src, finalize_egs_dir(src, out, opts)


@pytest.fixture(scope="module")
def en_egs(tiny_corpus, tiny_features, tmp_path_factory):
    out = tmp_path_factory.mktemp("egs") / "en"
    src, info = _frame_task(tiny_corpus, tiny_features, out)
    return out, info


def test_frame_egs_content(en_egs, tiny_corpus, tiny_features):
    out, info = en_egs
    egs = EgsDir(out)
    for name in ("num_frames", "feat_dim", "left_context", "right_context", "frames_per_eg", "num_archives",
                 "num_pdfs"):
        assert (out / "info" / name).is_file(), name
    assert egs.feat_dim == 40 and egs.left_context == 4 and egs.num_archives == 2
    feats = dict(kaldiio.load_scp(str(tiny_features / "feats" / "en" / "feats.scp")))
    pdfs = dict(kaldiio.load_scp(str(out / "ali_pdf.scp")))
    assert int(info["num_frames"]) == sum(m.shape[0] for m in feats.values())
    train_utts = set()
    for arch in egs.archives("train"):
        ids = np.arange(len(arch))
        x = arch.inputs(ids, 4, 3)
        pdf, weight = arch.frame_targets(ids)
        assert x.shape == (len(ids), 4 + 8 + 3, 40)
        for i in range(len(arch)):
            key = arch.key(i, egs.key_format)
            task, rest = key.split("-", 1)
            utt, first = rest.rsplit("-", 1)
            first = int(first)
            train_utts.add(utt)
            m = feats[utt]
            rows = np.clip(np.arange(first - 4, first + 8 + 3), 0, len(m) - 1)  # Kaldi's edge padding
            np.testing.assert_array_equal(x[i], m[rows])
            np.testing.assert_array_equal(pdf[i], pdfs[utt][first:first + 8])
        assert set(np.unique(weight)) <= {0.5, 1.0}
    valid = set((out / "valid_uttlist").read_text().split())
    subset = set((out / "train_subset_uttlist").read_text().split())
    assert len(valid) == round(0.2 * 16) and not valid & train_utts and subset <= train_utts
    valid_keys = {a.seg_keys[0] for a in egs.archives("valid") if len(a)}
    assert all(k.split("-", 1)[1] in valid for k in valid_keys)
    assert sum(len(a) for a in egs.archives("train")) == int(info["num_egs"])
    # overlapped frames carry 1/2 as in Kaldi: total weight == number of labelled frames
    total = sum(float(a.frame_targets(np.arange(len(a)))[1].sum()) for a in egs.archives("train"))
    train_frames = sum(len(feats[u]) for u in train_utts)
    assert abs(total - train_frames) <= 8 * len(train_utts)  # gaps leave < 1 chunk per utterance unlabelled


def test_float16_storage_is_half(tiny_corpus, tiny_features, tmp_path):
    opts = EgsOptions(**{**OPTS.__dict__, "dtype": "float16"})
    _frame_task(tiny_corpus, tiny_features, tmp_path / "en16", opts=opts)
    f32 = sum(p.stat().st_size for p in (tiny_features / "feats" / "en").glob("raw_fbank.*.ark"))
    f16 = sum(p.stat().st_size for p in (tmp_path / "en16").glob("*.feats"))
    egs_bytes = sum(p.stat().st_size for p in (tmp_path / "en16").glob("egs.*")
                    if p.suffix in (".feats", ".index", ".labels"))
    assert f16 < 0.65 * f32  # features once, in half precision (valid + diagnostic copies included)
    assert egs_bytes < 0.6 * f32


def test_utterance_task_two_sets(tiny_features, tmp_path):
    src = TaskSource("lang", "utterance",
                     [(s, tiny_features / "data" / s, tiny_features / "feats" / s) for s in ("en", "de")],
                     nj=2, labels="utt2lang")
    opts = EgsOptions(valid_fraction=0.25, chunking="random", min_chunk=20, max_chunk=40, dtype="float32")
    for a in (1, 2):
        egs_job(src, a, tmp_path, opts, progress=False)
    info = finalize_egs_dir(src, tmp_path, opts)
    assert info["num_classes"] == 2 and info["num_archives"] == 2
    assert (tmp_path / "info" / "classes.txt").read_text() == "de 0\nen 1\n"
    egs = EgsDir(tmp_path)
    for arch in egs.archives("train"):
        labels = arch.index["label"]
        assert set(labels) == {0, 1}  # every archive mixes the languages (features job J of each set)
        first_half = labels[: len(labels) // 2]
        assert 0.2 < first_half.mean() < 0.8  # shuffled, as Kaldi shuffles its archives
        assert ((arch.index["n"] >= 20) | (arch.index["t0"] == 0)).all() and (arch.index["n"] <= 40).all()
    report = (tmp_path / "report.tsv").read_text()
    assert "class_en" in report and "class_de" in report


def test_utterance_examples_sorted_by_length_within_windows(tiny_features, tmp_path):
    """sort_window: the same examples, shuffled as before, then sorted by length in each window of
    that many (what a block of whole utterances then pads: little)."""
    src = TaskSource("lang", "utterance",
                     [(s, tiny_features / "data" / s, tiny_features / "feats" / s) for s in ("en", "de")],
                     nj=2, labels="utt2lang")
    archives = {}
    for window in (0, 8):
        out = tmp_path / str(window)
        opts = EgsOptions(valid_fraction=0.25, chunking="random", min_chunk=20, max_chunk=40, sort_window=window)
        for a in (1, 2):
            egs_job(src, a, out, opts, progress=False)
        finalize_egs_dir(src, out, opts)
        archives[window] = list(EgsDir(out).archives("train"))
    for plain, sorted_ in zip(archives[0], archives[8]):
        recs = [sorted((arch.seg_keys[r["seg"]], int(r["t0"]), int(r["n"]), int(r["label"])) for r in arch.index)
                for arch in (plain, sorted_)]
        assert recs[0] == recs[1] and len(recs[0]) > 16  # the same examples
        n = sorted_.index["n"]
        assert all((np.diff(n[i:i + 8]) >= 0).all() for i in range(0, len(n), 8))
        assert (np.diff(plain.index["n"]) < 0).any() and (np.diff(n) < 0).any()  # shuffled; sorted only in windows


def test_sort_by_length_keeps_ties_in_shuffle_order():
    from babelflow.egs.format import sort_by_length

    n = np.array([5, 3, 5, 1, 3, 9, 2])
    order = np.array([6, 0, 2, 1, 4, 3, 5])
    assert sort_by_length(order, n, 4).tolist() == [6, 1, 0, 2, 3, 4, 5]
    assert sort_by_length(order, n, 0) is order


def test_skips_are_counted_and_all_skipped_is_an_error(tiny_corpus, tiny_features, tmp_path):
    from babelflow.kaldi.alignments import read_pdf_alignments, write_int_vectors

    pdfs = dict(read_pdf_alignments(str(tiny_corpus / "en" / "ali")))
    utts = sorted(pdfs)
    edited = {u: p for u, p in pdfs.items() if u != utts[0]}  # one without alignment
    edited[utts[1]] = edited[utts[1]][:-5]  # one 5 frames short (> tolerance 2)
    edited[utts[2]] = edited[utts[2]][:-2]  # one 2 frames short (within tolerance)
    write_int_vectors(f"ark:{tmp_path / 'pdf.ark'}", sorted(edited.items()))
    _frame_task(tiny_corpus, tiny_features, tmp_path / "egs", ali=f"ark:{tmp_path / 'pdf.ark'}")
    reports = [json.loads(p.read_text()) for p in (tmp_path / "egs").glob("report.*.json")]
    skipped = {}
    for r in reports:
        for k, v in r["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    assert skipped == {"no_alignment": 1, "length_mismatch": 1}
    assert "skipped_no_alignment" in (tmp_path / "egs" / "report.tsv").read_text()

    write_int_vectors(f"ark:{tmp_path / 'none.ark'}", [("nobody", np.zeros(5, np.int32))])
    with pytest.raises(BabelflowError, match="task 'en': no training examples .*no_alignment"):
        _frame_task(tiny_corpus, tiny_features, tmp_path / "egs2", ali=f"ark:{tmp_path / 'none.ark'}")


def test_pdf_out_of_range_leaves_no_archive(tiny_corpus, tiny_features, tmp_path):
    from babelflow.kaldi.alignments import read_pdf_alignments, write_int_vectors

    pdfs = dict(read_pdf_alignments(str(tiny_corpus / "en" / "ali")))
    write_int_vectors(f"ark:{tmp_path / 'pdf.ark'}", sorted(pdfs.items()))
    src = TaskSource("en", "frame", [("en", tiny_features / "data" / "en", tiny_features / "feats" / "en")], nj=2)
    prepare_pdf_alignments(f"ark:{tmp_path / 'pdf.ark'}", tmp_path / "egs")
    (tmp_path / "egs" / "num_pdfs").write_text("5\n")  # fewer pdfs than the alignment uses
    with pytest.raises(BabelflowError, match=r"utterance '.*-en-\d+': pdf id \d+ outside \[0, 5\)"):
        egs_job(src, 1, tmp_path / "egs", OPTS, progress=False)
    assert not list((tmp_path / "egs").glob("egs.1.*")) and not list((tmp_path / "egs").glob(".*tmp"))


def test_label_not_in_fixed_map(tiny_features, tmp_path):
    src = TaskSource("lang", "utterance", [("en", tiny_features / "data" / "en", tiny_features / "feats" / "en")],
                     nj=2, labels="utt2lang", classes=["de", "fr"])
    with pytest.raises(BabelflowError,
                       match=r"utt2lang: utterance '.*': label 'en' is not in the label map \(de, fr\)"):
        egs_job(src, 1, tmp_path, OPTS, progress=False)


def test_info_disagreeing_with_archives(en_egs, tmp_path):
    out, _ = en_egs
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    (bad / "info" / "feat_dim").write_text("41\n")
    with pytest.raises(BabelflowError, match=r"egs\.1\.feats: \d+ bytes, but .* info/ disagrees"):
        EgsDir(bad).check()
    shutil.copy(out / "info" / "feat_dim", bad / "info" / "feat_dim")
    (bad / "info" / "num_egs").write_text("3\n")
    with pytest.raises(BabelflowError, match="info/num_egs says 3"):
        EgsDir(bad).check()
    shutil.copy(out / "info" / "num_egs", bad / "info" / "num_egs")
    with open(bad / "egs.2.feats", "r+b") as f:
        f.truncate(100)
    with pytest.raises(BabelflowError, match="egs.2.feats"):
        EgsDir(bad).check()


def test_egs_from_an_adopted_kaldi_data_dir(en_egs, tiny_corpus, tiny_features, tmp_path):
    """A Kaldi data dir with feats.scp + cmvn.scp (no info/, utt2num_frames, conf/) makes the same egs;
    it must be told the CMVN to apply (a cmvn_opts file), and its egs info/ has no feat_type."""
    ours, info = en_egs
    kaldi = tmp_path / "train_hires"
    kaldi.mkdir()
    for name in ("feats.scp", "cmvn.scp"):
        shutil.copy(tiny_features / "feats" / "en" / name, kaldi / name)
    src = TaskSource("en", "frame", [("en", tiny_features / "data" / "en", kaldi)], nj=2)
    out = tmp_path / "egs"
    prepare_pdf_alignments(str(tiny_corpus / "en" / "ali"), out)
    with pytest.raises(BabelflowError, match=r"train_hires/cmvn_opts: file not found"):
        egs_job(src, 1, out, OPTS, progress=False)
    (kaldi / "cmvn_opts").write_text("--norm-means=false --norm-vars=false\n")
    for a in (1, 2):
        egs_job(src, a, out, OPTS, progress=False)
    adopted = finalize_egs_dir(src, out, OPTS)
    assert adopted == {k: v for k, v in info.items() if k != "feat_type"}
    assert not (out / "info" / "feat_type").exists()
    archives = sorted(ours.glob("*.[0-9]*.*"))  # egs.J.*, valid.J.*, train_diagnostic.J.*, report.J.json
    assert len(archives) >= 16
    for p in archives:
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


def test_duplicate_utterance_across_sets(tiny_features, tmp_path):
    src = TaskSource("lang", "utterance", [(s, tiny_features / "data" / "en", tiny_features / "feats" / "en")
                                           for s in ("a", "b")], nj=2, labels="utt2lang")
    with pytest.raises(BabelflowError, match="is in data sets 'a' and 'b'"):
        egs_job(src, 1, tmp_path, OPTS, progress=False)


def _ivector_dir(path, feats_dir, dim=5, period=10, drop=()):
    """A Kaldi-style online i-vector dir with random i-vectors for each utterance."""
    rng = np.random.default_rng(1)
    path.mkdir(parents=True)
    with kaldiio.WriteHelper(f"ark,scp:{path / 'ivector_online.ark'},{path / 'ivector_online.scp'}") as w:
        for utt, m in kaldiio.load_scp_sequential(str(feats_dir / "feats.scp")):
            if utt not in drop:
                w[utt] = rng.standard_normal(((m.shape[0] + period - 1) // period, dim)).astype(np.float32)
    (path / "ivector_period").write_text(f"{period}\n")
    return path


def test_ivectors_travel_with_examples(tiny_corpus, tiny_features, tmp_path):
    from babelflow.egs.kaldi_bridge import nnet_examples

    feats_dir = tiny_features / "feats" / "en"
    skip = sorted(kaldiio.load_scp(str(feats_dir / "feats.scp")))[0]
    ivdir = _ivector_dir(tmp_path / "iv", feats_dir, drop=(skip,))
    src = TaskSource("en", "frame", [("en", tiny_features / "data" / "en", feats_dir)], nj=2,
                     ivectors={"en": ivdir})
    out = tmp_path / "egs"
    prepare_pdf_alignments(str(tiny_corpus / "en" / "ali"), out)
    reports = [egs_job(src, a, out, OPTS, progress=False) for a in (1, 2)]
    info = finalize_egs_dir(src, out, OPTS)
    assert info["ivector_dim"] == 5
    assert sum(r["skipped"].get("no_ivector", 0) for r in reports) == 1
    ivecs = dict(kaldiio.load_scp(str(ivdir / "ivector_online.scp")))
    egs = EgsDir(out)
    for key, eg in nnet_examples(egs):
        names = [io.name for io in eg.io]
        assert names == ["input", "ivector", "output"]
        utt = key.split("-", 1)[1].rsplit("-", 1)[0]
        row = eg.io[1].features[0]
        assert any(np.array_equal(row, r) for r in ivecs[utt])  # one of the utterance's i-vectors
        assert eg.io[1].indexes.tolist() == [[0, 0, 0]]


def test_ivector_dims_must_agree_at_config_time(tiny_features, tmp_path):
    import copy

    from babelflow.config import load_params, resolve_config, validate_schema

    from .conftest import REPO

    p = load_params(REPO / "params.yaml")
    p["data"]["dirs"] = {s: str(tiny_features / "data" / s) for s in ("en", "de")}
    p["tasks"] = {s: {"kind": "frame", "data": s, "ali": "ark:/dev/null",
                      "ivectors": str(_ivector_dir(tmp_path / s, tiny_features / "feats" / s,
                                                   dim=5 if s == "en" else 4))}
                  for s in ("en", "de")}
    with pytest.raises(BabelflowError, match=r"tasks\.de\.ivectors: dim 4 \(de\) differs from 5"):
        resolve_config(validate_schema(p))
    q = copy.deepcopy(p)
    del q["tasks"]["de"]["ivectors"]
    with pytest.raises(BabelflowError, match=r"tasks\.de\.ivectors: missing, but tasks\.en has i-vectors"):
        resolve_config(validate_schema(q))


def test_held_out_speakers_are_unseen_in_training(tiny_features, tmp_path):
    from babelflow.data.datadir import read_utt2spk

    src = TaskSource("gender", "utterance",
                     [(s, tiny_features / "data" / s, tiny_features / "feats" / s) for s in ("en", "de")],
                     nj=2, labels="utt2gender")
    opts = EgsOptions(valid_fraction=0.25, dtype="float32", valid_by="speaker")
    for a in (1, 2):
        egs_job(src, a, tmp_path, opts, progress=False)
    info = finalize_egs_dir(src, tmp_path, opts)
    spk = {**read_utt2spk(tiny_features / "data" / "en" / "utt2spk"),
           **read_utt2spk(tiny_features / "data" / "de" / "utt2spk")}
    valid = (tmp_path / "valid_uttlist").read_text().split()
    egs = EgsDir(tmp_path)
    train_utts = {line.split()[0].removeprefix("gender-") for a in egs.archives("train")
                  for line in Path(f"{a.prefix}.segments").read_text().splitlines()}  # <task>-<utterance>
    valid_spk, train_spk = {spk[u] for u in valid}, {spk[u] for u in train_utts}
    assert valid_spk and train_spk and not valid_spk & train_spk  # whole speakers, none seen in training
    assert set(valid) == {u for u in spk if spk[u] in valid_spk}  # all their utterances (both languages)
    assert len(valid) >= round(0.25 * len(spk))  # speakers drawn until the wanted share is held out
    assert info["valid_by"] == "speaker" and info["num_valid_speakers"] == len(valid_spk)
    assert (tmp_path / "info" / "valid_by").read_text().strip() == "speaker"


def test_held_out_speakers_need_two(tiny_features, tmp_path):
    from babelflow.egs.make import held_out_lists

    with pytest.raises(BabelflowError, match=r"task 'x': egs\.valid_by speaker needs 2 speakers or more, it has 1"):
        held_out_lists(["a", "b", "c"], EgsOptions(valid_by="speaker"), "x", {"a": "s", "b": "s", "c": "s"})
