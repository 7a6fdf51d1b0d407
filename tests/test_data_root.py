"""``data.root``: running from the babelflow checkout on an experiment folder elsewhere.

Relative paths in params.yaml and in ``wav.scp`` (files and pipes) are relative to the root, as
Kaldi's are to its experiment folder; the data step writes a ``wav.scp`` that says so, so every
later job reads the same audio from wherever it runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from babelflow.config import rooted_paths
from babelflow.data.audio import iter_data_audio
from babelflow.data.split import prepare_data_dir
from babelflow.errors import BabelflowError

from .conftest import project_copy, run
from .test_datadir import write_lines, write_wav


def _experiment(root):
    (root / "wav").mkdir(parents=True)
    d = root / "data" / "train"
    d.mkdir(parents=True)
    for r in ("r1", "r2"):
        write_wav(root / "wav" / f"{r}.wav", secs=0.6)
    write_lines(d / "wav.scp", ["r1 cat wav/r1.wav |", "r2 wav/r2.wav"])
    write_lines(d / "utt2spk", ["r1 s1", "r2 s2"])
    write_lines(d / "spk2utt", ["s1 r1", "s2 r2"])
    return d


def test_every_relative_user_path_is_joined_to_the_root(tmp_path):
    cfg = {"data": {"root": str(tmp_path), "dirs": {"a": "data/a", "b": "/abs/b"}},
           "tasks": {"a": {"ali": "exp/a/tri5_ali", "lexicon": "data/local/lexicon.txt", "egs": "exp/a/egs",
                           "ivectors": {"a": "exp/a/ivectors"}},
                     "b": {"ali": "auto"}, "c": {"ali": "ark:ali.ark"}},
           "features": {"existing": {"a": "data/a_hires"}, "config": "conf/mfcc_hires.conf"},
           "merge": {"local_conf": "conf/local.conf"}, "model": {"config": None}, "train": {"init": "x.pt"}}
    got = rooted_paths(cfg)
    assert got["data"]["dirs"] == {"a": f"{tmp_path}/data/a", "b": "/abs/b"}
    a = got["tasks"]["a"]
    assert (a["ali"], a["lexicon"], a["egs"], a["ivectors"]["a"]) == (
        f"{tmp_path}/exp/a/tri5_ali", f"{tmp_path}/data/local/lexicon.txt", f"{tmp_path}/exp/a/egs",
        f"{tmp_path}/exp/a/ivectors")
    assert got["tasks"]["b"]["ali"] == "auto" and got["tasks"]["c"]["ali"] == "ark:ali.ark"
    assert got["features"]["existing"]["a"] == f"{tmp_path}/data/a_hires"
    assert got["features"]["config"] == f"{tmp_path}/conf/mfcc_hires.conf"
    assert got["merge"]["local_conf"] == f"{tmp_path}/conf/local.conf" and got["model"]["config"] is None
    assert got["train"]["init"] == f"{tmp_path}/x.pt"
    assert rooted_paths(got) == got  # idempotent
    with pytest.raises(BabelflowError, match=r"params\.yaml: data\.root: directory '.*nowhere' not found"):
        rooted_paths({"data": {"root": str(tmp_path / "nowhere")}})


def test_the_data_step_writes_audio_every_job_reads_from_anywhere(tmp_path, monkeypatch):
    root = tmp_path / "babel"
    d = _experiment(root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the relative paths do not resolve here
    with pytest.raises(BabelflowError, match=r"wav\.scp:2 .*audio file not found: wav/r2\.wav .*set data\.root"):
        prepare_data_dir(d, tmp_path / "x", 1)
    prepare_data_dir(d, tmp_path / "out", 1, root=root)
    wav = (tmp_path / "out" / "wav.scp").read_text().splitlines()
    assert wav == [f"r1 cd {root} && cat wav/r1.wav |", f"r2 {root}/wav/r2.wav"]
    assert (tmp_path / "out" / "split1" / "1" / "wav.scp").read_text().splitlines() == wav
    monkeypatch.chdir(tmp_path)
    got = {k: s for k, _, s in iter_data_audio(tmp_path / "out" / "wav.scp")}
    monkeypatch.chdir(root)
    ref = {k: s for k, _, s in iter_data_audio(d / "wav.scp")}
    assert set(got) == {"r1", "r2"} and all(np.array_equal(got[k], ref[k]) for k in ref)


def test_a_checkout_runs_on_an_experiment_folder_by_data_root(tmp_path):
    root = tmp_path / "babel"
    _experiment(root)
    (tmp_path / "proj").mkdir()
    proj = project_copy(tmp_path / "proj", data__root=str(root), data__dirs={"train": "data/train"}, data__nj=1,
                        tasks={"lid": {"kind": "utterance", "data": "train", "labels": "utt2spk"}},
                        merge__weights={}, decode__gmm=False)
    run(["snakemake", "--cores", "1", "exp/data/train"], proj)
    assert (proj / "exp" / "data" / "train" / "wav.scp").read_text().splitlines()[1] == f"r2 {root}/wav/r2.wav"
    # the audio behind the root's wav.scp is an input: a changed recording reruns the data step
    write_wav(root / "wav" / "r1.wav", secs=0.7)
    out = run(["snakemake", "-n", "--cores", "1", "exp/data/train"], proj).stdout
    assert "rule data:" in out and f"{root}/wav/r1.wav" in out
