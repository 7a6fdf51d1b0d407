"""Never stale: a user's data dir is tracked file by file, with the audio its wav.scp names, in
Snakemake (mtimes) and DVC (contents) alike (babelflow.data.sources)."""

from __future__ import annotations

import os
import shutil
import time

import pytest
import yaml

from babelflow.data.sources import audio_files, audio_roots, data_dir_files

from .conftest import dvc_project, planned_jobs, run

pytestmark = pytest.mark.slow


def test_audio_named_by_paths_pipes_and_ark_offsets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # Kaldi resolves relative paths from the experiment folder
    for f in ("audio/a.wav", "audio/b.flac", "audio/sub/c.sph", "audio/d.ark"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(b"x")
    d = tmp_path / "data" / "train"
    d.mkdir(parents=True)
    (d / "wav.scp").write_text("u1 audio/a.wav\nu2 flac -c -d -s audio/b.flac |\n"
                               "u3 sph2pipe -f wav -p -c 1 audio/sub/c.sph |\nu4 audio/d.ark:1234\n"
                               "u5 sox -n -r 16000 -t wav - synth 1 sine 440 |\n")
    (d / "text").write_text("u1 a\n")
    (d / ".backup").mkdir()
    assert audio_files(str(d)) == ("audio/a.wav", "audio/b.flac", "audio/d.ark", "audio/sub/c.sph")
    assert data_dir_files(str(d)) == (str(d / "text"), str(d / "wav.scp"))
    assert audio_roots(audio_files(str(d))) == ["audio"]
    assert audio_roots(["/x/a.wav", "/y/b.wav"]) == ["/x", "/y"]  # no common directory but the root


def _user_project(tmp_path, tiny_corpus):
    """The tiny corpus as a user's data (copied: the test edits it), one frame task; a DVC repo."""
    for lang in ("en",):
        shutil.copytree(tiny_corpus / lang, tmp_path / "src" / lang, ignore=shutil.ignore_patterns("test"))
        wav = tmp_path / "src" / lang / "data" / "wav.scp"
        wav.write_text("".join(f"{k} {tmp_path / 'src' / lang / 'wav' / os.path.basename(p)}\n" for k, p in
                               (line.split() for line in wav.read_text().splitlines())))
    edits = {"data__dirs": {"en": str(tmp_path / "src" / "en" / "data")},
             "tasks": {"en": {"kind": "frame", "data": "en", "ali": str(tmp_path / "src" / "en" / "ali")}},
             "merge__weights": {}, "decode__gmm": False}
    (tmp_path / "proj").mkdir()
    return dvc_project(tmp_path / "proj", **edits)


def test_an_edit_inside_the_data_dir_or_of_a_recording_reruns_data_in_both_tools(tmp_path, tiny_corpus):
    proj = _user_project(tmp_path, tiny_corpus)
    stage = yaml.safe_load((proj / "dvc.yaml").read_text())["stages"]["data"]
    assert str(tmp_path / "src" / "en" / "wav") in stage["deps"]  # the audio, as its directory
    run(["dvc", "repro", "data"], proj)
    run(["git", "add", "-A"], proj)
    run(["git", "commit", "-q", "-m", "data"], proj)
    assert "data" not in planned_jobs(proj)
    src = tmp_path / "src" / "en"
    text = src / "data" / "text"
    dir_mtime = os.stat(src / "data").st_mtime_ns
    time.sleep(0.01)
    lines = text.read_text().splitlines()
    first = lines[0].split()
    with open(text, "w") as f:  # edited in place: the directory's mtime does not move
        f.write("\n".join([" ".join([first[0], *first[2:], first[1]]), *lines[1:]]) + "\n")
    assert os.stat(src / "data").st_mtime_ns == dir_mtime
    assert planned_jobs(proj).get("data") == 1
    run(["dvc", "repro", "data"], proj)  # rebuilt: both tools up to date again
    assert "data" not in planned_jobs(proj)
    # a recording changes: Snakemake by its mtime, DVC by its contents
    wav = sorted((src / "wav").glob("*.wav"))[0]
    wav.write_bytes(wav.read_bytes()[:-2] + b"\x01\x00")
    assert planned_jobs(proj).get("data") == 1
    status = run(["dvc", "status", "data"], proj).stdout
    assert "modified:" in status and str(src / "wav") in status, status
