"""Features Kaldi already made (features.existing): adopted, checked in full, not recomputed."""

from __future__ import annotations

import shutil

import kaldiio
import numpy as np
import pytest

from babelflow.errors import BabelflowError
from babelflow.make_feats import import_feats_dir

from .conftest import dvc_project, planned_jobs, run

pytestmark = pytest.mark.slow


def _kaldi_dir(tiny_features, tmp_path, lang="en"):
    """What make_fbank.sh + compute_cmvn_stats.sh leave in a Kaldi data dir: feats.scp, cmvn.scp, no info/."""
    d = tmp_path / "kaldi" / lang
    d.mkdir(parents=True)
    feats = {k: np.array(m) for k, m in kaldiio.load_scp(str(tiny_features / "feats" / lang / "feats.scp")).items()}
    kaldiio.save_ark(str(d / "raw.ark"), feats, scp=str(d / "feats.scp"))
    cmvn = dict(kaldiio.load_scp(str(tiny_features / "feats" / lang / "cmvn.scp")))
    kaldiio.save_ark(str(d / "cmvn_raw.ark"), cmvn, scp=str(d / "cmvn.scp"))
    return d, feats


def test_adopted_features_are_the_users_own(tiny_features, tmp_path):
    src, feats = _kaldi_dir(tiny_features, tmp_path)
    out = tmp_path / "out"
    info = import_feats_dir(src, tiny_features / "data" / "en", out, "--norm-means=false --norm-vars=false")
    assert info["feat_dim"] == 40 and info["num_utts"] == len(feats)
    got = dict(kaldiio.load_scp(str(out / "feats.scp")))
    assert all(np.array_equal(got[k], feats[k]) for k in feats)
    assert str(src / "raw.ark") in (out / "feats.scp").read_text()  # pointed at, not copied
    frames = dict(line.split() for line in (out / "utt2num_frames").read_text().splitlines())
    assert {k: int(v) for k, v in frames.items()} == {k: m.shape[0] for k, m in feats.items()}


@pytest.mark.parametrize("damage, match", [
    (lambda m: m.__setitem__((3, 5), np.nan), r"utterance '[^']+': NaN in frame 3"),
    (lambda m: m.__setitem__((7, 0), np.inf), r"utterance '[^']+': Inf in frame 7"),
])
def test_nan_or_inf_is_named_by_utterance_and_frame_and_nothing_is_written(tiny_features, tmp_path, damage, match):
    src, feats = _kaldi_dir(tiny_features, tmp_path)
    key = sorted(feats)[2]
    damage(feats[key])
    kaldiio.save_ark(str(src / "raw.ark"), feats, scp=str(src / "feats.scp"))
    with pytest.raises(BabelflowError, match=match.replace("[^']+", key)):
        import_feats_dir(src, tiny_features / "data" / "en", tmp_path / "out", "--norm-means=false")
    assert not (tmp_path / "out").exists()


def test_a_truncated_archive_names_the_key(tiny_features, tmp_path):
    src, feats = _kaldi_dir(tiny_features, tmp_path)
    ark = src / "raw.ark"
    ark.write_bytes(ark.read_bytes()[: ark.stat().st_size // 2])
    with pytest.raises(BabelflowError, match=r"feats\.scp: utterance '[^']+' \(.*raw\.ark:\d+\): unreadable"):
        import_feats_dir(src, tiny_features / "data" / "en", tmp_path / "out", "--norm-means=false")


def test_the_chain_starts_at_egs_on_kaldis_features(tiny_corpus, tiny_features, tmp_path):
    src, feats = _kaldi_dir(tiny_features, tmp_path)
    shutil.copytree(tiny_corpus / "en", tmp_path / "corpus_en", ignore=shutil.ignore_patterns("test"))
    (tmp_path / "proj").mkdir()
    proj = dvc_project(tmp_path / "proj", data__dirs={"en": str(tmp_path / "corpus_en" / "data")},
                       tasks={"en": {"kind": "frame", "data": "en", "ali": str(tmp_path / "corpus_en" / "ali")}},
                       merge__weights={}, decode__gmm=False, features__existing={"en": str(src)},
                       features__options={"num_mel_bins": 40, "dither": 0})
    jobs = planned_jobs(proj)
    assert jobs.get("features_import") == 1 and "features_job" not in jobs and "features" not in jobs
    run(["snakemake", "--cores", "2", "exp/egs/en/info/num_archives"], proj)
    assert (proj / "exp" / "feats" / "en" / "info" / "imported_from").read_text().strip() == str(src)
    assert int((proj / "exp" / "egs" / "en" / "info" / "feat_dim").read_text()) == 40
    # the archives Kaldi wrote are dependencies: a changed one reruns the import
    assert str(src / "raw.ark") in (proj / "dvc.yaml").read_text()
    feats[sorted(feats)[0]][0, 0] += 1.0  # Kaldi's features changed (same layout, same offsets)
    kaldiio.save_ark(str(src / "raw.ark"), feats)
    assert planned_jobs(proj).get("features_import") == 1
