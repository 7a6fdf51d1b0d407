"""The `babelflow` command line: Kaldi argument order, clean errors, --help everywhere."""

from __future__ import annotations

import subprocess
import sys

import kaldiio
import numpy as np
import pytest

from babelflow.cli import build_parser


def babelflow(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "babelflow.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_every_subcommand_has_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert {"demo-corpus", "data", "features", "compute-feats", "ali-to-pdf", "check-config"} <= set(sub.choices)
    for name in sub.choices:
        proc = babelflow(name, "--help")
        assert proc.returncode == 0 and "usage: babelflow " + name in proc.stdout, name


def test_ali_to_pdf_like_kaldi(kaldi_fixtures):
    lang0 = kaldi_fixtures / "lang0"
    proc = babelflow("ali-to-pdf", lang0 / "final.mdl", f"ark:gunzip -c {lang0 / 'ali.1.gz'}|", "ark,t:-")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (lang0 / "pdf_ali.txt").read_text()


def test_compute_feats_kaldi_style(kaldi_fixtures, tmp_path):
    ark, scp = tmp_path / "feats.ark", tmp_path / "feats.scp"
    proc = babelflow("compute-feats", "mfcc", "--config=conf/mfcc.conf", "scp:wav.scp", f"ark,scp:{ark},{scp}",
                     cwd=kaldi_fixtures)
    assert proc.returncode == 0, proc.stderr
    ours = dict(kaldiio.load_scp(str(scp)))
    ref = dict(kaldiio.load_ark(str(kaldi_fixtures / "feats" / "mfcc.ark")))
    for k in ref:
        assert ours[k].shape == ref[k].shape
        np.testing.assert_allclose(ours[k][:, 0], ref[k][:, 0], atol=1e-3)  # c0 = log energy
    # a Kaldi flag given on the command line overrides the conf file
    proc = babelflow("compute-feats", "mfcc", "--config=conf/mfcc.conf", "--num-ceps=10", "scp:wav.scp",
                     "ark,t:-", cwd=kaldi_fixtures)
    assert proc.returncode == 0 and proc.stdout.startswith("en1  [")
    assert len(proc.stdout.splitlines()[1].split()) == 10


def test_cmvn_tools_like_kaldi(kaldi_fixtures, tmp_path):
    stats = tmp_path / "cmvn.ark"
    assert babelflow("compute-cmvn-stats", "scp:feats/fbank.scp", f"ark:{stats}", cwd=kaldi_fixtures).returncode == 0
    ref = dict(kaldiio.load_ark(str(kaldi_fixtures / "feats" / "cmvn_fbank.txt")))
    ours = dict(kaldiio.load_ark(str(stats)))
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=1e-5)
    out = tmp_path / "cmvn_feats.ark"
    proc = babelflow("apply-cmvn", "--norm-vars=true", f"ark:{stats}", "scp:feats/fbank.scp", f"ark:{out}",
                     cwd=kaldi_fixtures)
    assert proc.returncode == 0, proc.stderr
    ref = dict(kaldiio.load_ark(str(kaldi_fixtures / "feats" / "fbank_cmvn.txt")))
    for k, m in kaldiio.load_ark(str(out)):
        np.testing.assert_allclose(m, ref[k], atol=1e-3)


@pytest.mark.parametrize("breakage, message", [
    (lambda d: (d / "utt2spk").write_text("b-1 b\na-1 a\n"), "utt2spk:2"),
    (lambda d: (d / "wav.scp").write_text("a-1 /nonexistent/a.wav\nb-1 /nonexistent/b.wav\n"), "wav.scp:1"),
])
def test_malformed_data_dir_gives_one_line_error(tmp_path, breakage, message):
    import soundfile as sf

    d = tmp_path / "data"
    d.mkdir()
    for spk in ("a", "b"):
        sf.write(tmp_path / f"{spk}.wav", np.zeros(8000, np.int16), 16000)
    (d / "wav.scp").write_text(f"a-1 {tmp_path / 'a.wav'}\nb-1 {tmp_path / 'b.wav'}\n")
    (d / "utt2spk").write_text("a-1 a\nb-1 b\n")
    (d / "spk2utt").write_text("a a-1\nb b-1\n")
    assert babelflow("validate-data", d).returncode == 0
    breakage(d)
    proc = babelflow("data", "--nj", 1, d, tmp_path / "out")
    assert proc.returncode == 1
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
