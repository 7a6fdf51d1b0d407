"""A user's own Kaldi experiment, laid out as babel_multilang's, run in one try from elsewhere.

The folder holds what a Kaldi user has after the GMM and feature stages: data dirs on
recordings + ``segments`` with ``cat ... |`` pipes and paths relative to the folder, hires
features + CMVN for one language, ``exp/<lang>/tri5_ali`` dirs, a get_egs.sh egs dir for the
other language (archives not named ``egs.N.ark``) and a ``local.conf`` with the weights. Its
``params.yaml`` holds only what differs from the defaults. The workflow is deployed onto it the
Snakemake way (``-s <babelflow>/Snakefile -d <experiment>``) from another directory, then the
same folder is put under DVC (``babelflow dvc-sync -s <babelflow>/Snakefile``) and reproduced by ``dvc repro``.
"""

from __future__ import annotations

import json
import shutil
import wave

import kaldiio
import numpy as np
import pytest
import yaml

from babelflow.egs.kaldi_bridge import export_kaldi
from babelflow.egs.options import EgsOptions

from .conftest import REPO, run
from .test_egs import _frame_task

pytestmark = pytest.mark.slow

MODEL = {"layers": [{"dim": 32, "splice": [-2, 0, 2]}, {"dim": 32, "splice": [-3, 3]}], "bottleneck": {"dim": 16},
         "frame_head": {"hidden": [32]}, "utterance_head": {"hidden": [32]}}
PARAMS = {  # only what differs from the schema's defaults, every path relative to the experiment
    "data": {"nj": 2, "dirs": {"en": "data/en/train", "de": "data/de/train"}},
    "tasks": {"en": {"kind": "frame", "data": "en", "ali": "exp/en/tri5_ali"},
              "de": {"kind": "frame", "data": "de", "ali": "exp/de/tri5_ali", "egs": "exp/de/nnet3/egs"}},
    "features": {"existing": {"en": "data/en/train_hires"}, "config": "conf/fbank.conf"},
    "merge": {"local_conf": "conf/local.conf", "block_size": 16},
    "egs": {"left_context": 5, "right_context": 5},
    "model": MODEL,
    "train": {"num_epochs": 1},
    "decode": {"gmm": False},
    "workdir": "bf",
}


def _duration(path) -> float:
    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()


def _experiment(root, tiny_corpus, tiny_features, tmp_path):
    """The Kaldi user's folder (every path inside it relative, as Kaldi writes them)."""
    for lang in ("en", "de"):
        src, train = tiny_corpus / lang / "data", root / "data" / lang / "train"
        train.mkdir(parents=True)
        (root / "wav" / lang).mkdir(parents=True)
        wavs = dict(line.split(None, 1) for line in (src / "wav.scp").read_text().splitlines())
        scp, segments = [], []
        for utt, path in sorted(wavs.items()):
            shutil.copy(path.strip(), root / "wav" / lang / f"{utt}.wav")
            rel = f"wav/{lang}/{utt}.wav"
            if lang == "en":  # recordings + segments, read through a pipe
                scp.append(f"rec-{utt} cat {rel} |")
                segments.append(f"{utt} rec-{utt} 0.00 {_duration(root / rel):.2f}")
            else:
                scp.append(f"{utt} {rel}")
        (train / "wav.scp").write_text("\n".join(scp) + "\n")
        if segments:
            (train / "segments").write_text("\n".join(segments) + "\n")
        for f in ("utt2spk", "spk2utt", "text"):
            shutil.copy(src / f, train / f)
        shutil.copytree(tiny_corpus / lang / "ali", root / "exp" / lang / "tri5_ali")
    # make_fbank.sh + compute_cmvn_stats.sh for en: archives named by relative paths
    hires = root / "data" / "en" / "train_hires"
    hires.mkdir()
    for name, scp in (("raw_fbank", "feats.scp"), ("cmvn", "cmvn.scp")):
        mats = {k: np.array(m) for k, m in kaldiio.load_scp(str(tiny_features / "feats" / "en" / scp)).items()}
        kaldiio.save_ark(f"data/en/train_hires/{name}.ark", mats, scp=f"data/en/train_hires/{scp}")
    # get_egs.sh for de (context 5/5 = the model's), archives named egs.de.J.ark
    _frame_task(tiny_corpus, tiny_features, tmp_path / "native_de", lang="de",
                opts=EgsOptions(num_valid_utts=300, valid_fraction=0.2, left_context=5, right_context=5,
                                dtype="float32"))
    egs = root / "exp" / "de" / "nnet3" / "egs"
    (egs / "info").mkdir(parents=True)
    n = export_kaldi(tmp_path / "native_de", f"ark:{egs / 'egs.de.1.ark'}")
    for key, value in {"feat_dim": 40, "left_context": 5, "right_context": 5, "num_archives": 1,
                       "frames_per_eg": 8, "ivector_dim": 0, "num_frames": n * 8}.items():
        (egs / "info" / key).write_text(f"{value}\n")
    (egs / "cmvn_opts").write_text("--norm-means=false --norm-vars=false\n")
    (root / "conf").mkdir()
    (root / "conf" / "local.conf").write_text('lang_list=(en de)\nlang2weight="1.0,0.5"\n')
    (root / "conf" / "fbank.conf").write_text("--num-mel-bins=40\n--use-energy=false\n")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS, sort_keys=False))
    return n


def test_a_kaldi_experiment_runs_in_one_try_from_elsewhere_then_under_dvc(tiny_corpus, tiny_features, tmp_path,
                                                                          monkeypatch):
    root = tmp_path / "babel_multilang"
    root.mkdir()
    monkeypatch.chdir(root)
    num_kaldi_egs = _experiment(root, tiny_corpus, tiny_features, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    snake = ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(root), "--configfile", str(root / "params.yaml")]
    run([*snake, "--cores", "2"], elsewhere)

    work = root / "bf"
    # reused, not recomputed: en's features, de's egs
    assert (work / "feats" / "en" / "info" / "imported_from").read_text().strip() == "data/en/train_hires"
    assert not list((work / "feats" / "en").glob("raw_*.ark"))
    de = {p.name: p.read_text().strip() for p in (work / "egs" / "de" / "info").iterdir()}
    assert de["source"] == "exp/de/nnet3/egs" and int(de["num_egs"]) == num_kaldi_egs
    assert not (work / "egs" / "de" / "ali_pdf.scp").exists()
    # the recipe's local.conf weighed the tasks
    rows = [line.split("\t") for line in (work / "merged" / "tasks.tsv").read_text().splitlines()]
    assert {r[1]: float(r[5]) for r in rows[1:]} == {"en": 1.0, "de": 0.5}
    models = json.loads((work / "models" / "metrics.json").read_text())
    assert {"en", "de"} <= set(models)
    assert "Nothing to be done" in run([*snake, "-n", "--cores", "2"], elsewhere).stdout

    # the same folder under DVC, its stages running babelflow's Snakefile there
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["babelflow", "dvc-sync", "-s", str(REPO / "Snakefile")]):
        run(cmd, root)
    run(["dvc", "repro"], root)
    assert "Data and pipelines are up to date" in run(["dvc", "status"], root).stdout
    # the recipe's weights are a dependency in both tools
    (root / "conf" / "local.conf").write_text('lang_list=(en de)\nlang2weight="1.0,0.25"\n')
    assert "rule merge:" in run([*snake, "-n", "--cores", "2"], elsewhere).stdout
    assert "merge" in run(["dvc", "status"], root).stdout
    # so is the *contents* of the feature conf: one option edited inside it
    (root / "conf" / "fbank.conf").write_text("--num-mel-bins=40\n--use-energy=false\n--low-freq=40\n")
    planned = run([*snake, "-n", "--cores", "2"], elsewhere).stdout
    assert "rule features_job:" in planned and "rule features_import:" in planned
    assert "features" in run(["dvc", "status"], root).stdout
