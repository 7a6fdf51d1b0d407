"""The artifact readers and helpers: FeatsDir (ours, and an adopted Kaldi data dir), info/, utt2spk."""

from __future__ import annotations

import shutil
import subprocess
import sys

import kaldiio
import numpy as np
import pytest

from babelflow.data.datadir import read_spk2utt, read_utt2spk
from babelflow.data.featsdir import FeatsDir
from babelflow.errors import BabelflowError
from babelflow.features import cmvn_stats
from babelflow.io import read_info, write_info

FRAMES = {"spk1-u1": 7, "spk1-u2": 5, "spk2-u1": 9}


def _kaldi_data_dir(path, dim=13) -> dict[str, np.ndarray]:
    """A Kaldi data dir after make_mfcc.sh + compute_cmvn_stats.sh: feats.scp, cmvn.scp, utt2spk, no info/."""
    rng = np.random.default_rng(0)
    path.mkdir(parents=True)
    feats = {u: rng.standard_normal((n, dim)).astype(np.float32) for u, n in FRAMES.items()}
    with kaldiio.WriteHelper(f"ark,scp:{path / 'raw_mfcc.1.ark'},{path / 'feats.scp'}") as w:
        for u, m in feats.items():
            w[u] = m
    utt2spk = {u: u.split("-")[0] for u in feats}
    (path / "utt2spk").write_text("".join(f"{u} {s}\n" for u, s in utt2spk.items()))
    with kaldiio.WriteHelper(f"ark,scp:{path / 'cmvn.ark'},{path / 'cmvn.scp'}") as w:
        for spk in sorted(set(utt2spk.values())):
            w[spk] = cmvn_stats(m for u, m in feats.items() if utt2spk[u] == spk)
    return feats


def test_adopted_kaldi_data_dir(tmp_path):
    d = tmp_path / "train_hires"
    feats = _kaldi_data_dir(d)
    fd = FeatsDir(d)
    assert fd.adopted and fd.utts == list(FRAMES)
    assert fd.feat_dim == 13  # no info/feat_dim: the first matrix's
    assert fd.utt2num_frames == FRAMES  # no utt2num_frames: the matrices' rows
    assert fd.cmvn_opts is None and fd.feat_type is None and fd.conf_dir is None
    assert np.array_equal(fd.load("spk2-u1"), feats["spk2-u1"])
    stats = fd.cmvn_stats()
    assert sorted(stats) == ["spk1", "spk2"] and stats["spk1"].shape == (2, 14)
    assert stats["spk1"][0, -1] == FRAMES["spk1-u1"] + FRAMES["spk1-u2"]  # the count: the speaker's frames
    with pytest.raises(BabelflowError, match="no utterance 'nope'"):
        fd.load("nope")


def test_adopted_dir_uses_its_own_files(tmp_path):
    d = tmp_path / "train_hires"
    _kaldi_data_dir(d)
    (d / "utt2num_frames").write_text("".join(f"{u} {n}\n" for u, n in FRAMES.items()))
    (d / "cmvn_opts").write_text("--norm-means=false --norm-vars=false\n")
    (d / "raw_mfcc.1.ark").unlink()  # so nothing can come from the matrices
    fd = FeatsDir(d)
    assert fd.utt2num_frames == FRAMES and fd.cmvn_opts == "--norm-means=false --norm-vars=false"
    write_info(d, {"feat_dim": 13})
    assert FeatsDir(d, adopt=True).feat_dim == 13 and not FeatsDir(d).adopted


def test_adopted_dir_needs_feats_and_cmvn(tmp_path):
    d = tmp_path / "train_hires"
    _kaldi_data_dir(d)
    (d / "cmvn.scp").unlink()
    with pytest.raises(BabelflowError, match=r"train_hires/cmvn\.scp: file not found"):
        FeatsDir(d)
    (d / "feats.scp").unlink()
    with pytest.raises(BabelflowError, match=r"train_hires/feats\.scp: file not found"):
        FeatsDir(d)
    with pytest.raises(BabelflowError, match="no such features dir"):
        FeatsDir(tmp_path / "nowhere")


def test_features_dir_of_the_features_step(tiny_features, tmp_path):
    fd = FeatsDir(tiny_features / "feats" / "en")
    assert not fd.adopted
    assert (fd.feat_type, fd.feat_dim, fd.cmvn_opts) == ("fbank", 40, "--norm-means=false --norm-vars=false")
    assert fd.conf_dir is not None and (fd.conf_dir / "fbank.conf").is_file()
    assert list(fd.utt2num_frames) == fd.utts == sorted(fd.utts)
    u = fd.utts[0]
    assert fd.load(u).shape == (fd.utt2num_frames[u], 40)
    assert fd.info["num_utts"] == str(len(fd.utts))
    # a features dir of ours falls back on nothing: a missing file is named
    copy = tmp_path / "en"
    shutil.copytree(fd.path, copy)
    for name in ("info/feat_type", "info/feat_dim", "cmvn_opts", "utt2num_frames"):
        (copy / name).unlink()
        fresh = FeatsDir(copy)
        with pytest.raises(BabelflowError, match=rf"en/{name}: file not found"):
            getattr(fresh, name.split("/")[-1])


def test_info_helpers(tmp_path):
    assert read_info(tmp_path) == {}
    write_info(tmp_path, {"num_utts": 3, "feat_type": "fbank", "frame_shift": 10.0})
    assert (tmp_path / "info" / "num_utts").read_text() == "3\n"
    assert (tmp_path / "info" / "frame_shift").read_text() == "10.0\n"
    assert read_info(tmp_path) == {"feat_type": "fbank", "frame_shift": "10.0", "num_utts": "3"}
    assert not list((tmp_path / "info").glob(".*"))  # written atomically, no temp files left


def test_read_utt2spk_and_spk2utt(tmp_path):
    (tmp_path / "utt2spk").write_text("a-1 a\na-2 a\nb-1 b\n")
    assert read_utt2spk(tmp_path / "utt2spk") == {"a-1": "a", "a-2": "a", "b-1": "b"}
    for rspec in (f"ark:{tmp_path / 'utt2spk'}", f"ark,t:{tmp_path / 'utt2spk'}", str(tmp_path / "utt2spk")):
        assert read_utt2spk(rspec) == read_utt2spk(tmp_path / "utt2spk")
    (tmp_path / "spk2utt").write_text("a a-1 a-2\nb b-1\n")
    assert read_spk2utt(f"ark:{tmp_path / 'spk2utt'}") == {"a": ["a-1", "a-2"], "b": ["b-1"]}
    (tmp_path / "utt2spk").write_text("a-1 a x\n")
    with pytest.raises(BabelflowError, match=r"utt2spk:1 .*at most 2 fields"):
        read_utt2spk(tmp_path / "utt2spk")


def test_readers_import_one_way():
    """The merged dir's reader needs neither torch nor the Kaldi bridge; the bridge builds on it."""
    code = ("import sys, babelflow.egs.merged, babelflow.egs.examples, babelflow.data.featsdir; "
            "print(sorted(m for m in ('torch', 'babelflow.egs.kaldi_bridge', 'babelflow.nnet.data') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
