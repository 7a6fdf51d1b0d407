"""wav.scp and segments read as Kaldi reads them, with one clear line when a pipe or a file fails."""

from __future__ import annotations

import copy

import kaldiio
import numpy as np
import pytest
import soundfile as sf

from babelflow.config import load_params
from babelflow.data.audio import iter_data_audio, pipe_programs

from .conftest import REPO, run


@pytest.fixture
def audio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # pipes and relative paths run from the experiment folder, as in Kaldi
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(16000 * 2) * 3000).astype(np.int16)
    sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
    sf.write(tmp_path / "a.flac", x, 16000, subtype="PCM_16")
    return tmp_path, x


def _scp(d, text: str) -> str:
    (d / "wav.scp").write_text(text)
    return str(d / "wav.scp")


def test_paths_pipes_and_flac_give_the_same_int16_samples(audio):
    d, x = audio
    scp = _scp(d, "r1 a.wav\nr2 cat a.wav |\nr3 a.flac\nr4 cat a.flac |\n")
    got = list(iter_data_audio(scp))
    assert [k for k, _, _ in got] == ["r1", "r2", "r3", "r4"]
    for _, rate, samples in got:
        assert rate == 16000 and samples.dtype == np.int16 and np.array_equal(samples, x)
    assert pipe_programs(scp) == ["cat"]


def test_segments_as_extract_segments_cuts_them(audio, caplog):
    d, x = audio
    scp = _scp(d, "r1 a.wav\n")
    (d / "segments").write_text("u1 r1 0.10 0.55\nu2 r1 1.5 -1\nu3 r1 1.9 2.3\nu4 r1 1.9 2.6\n")
    skipped: list[tuple[str, str]] = []
    got = {k: s for k, _, s in iter_data_audio(scp, d / "segments", skipped=skipped)}
    ref = dict(kaldiio.load_scp_sequential(scp, segments=str(d / "segments")))
    assert np.array_equal(got["u1"], ref["u1"][1]) and np.array_equal(got["u1"], x[1600:8800])
    assert np.array_equal(got["u2"], x[24000:])
    assert np.array_equal(got["u3"], x[30400:])  # 0.3 s past the end: within --max-overshoot, clipped
    assert "u4" not in got  # 0.6 s past the end: skipped, and named
    assert "skipped segment u4: " in caplog.text and "segments:4: ends 0.600 s after its recording r1" in caplog.text
    assert [(k, r.split(": ", 1)[1]) for k, r in skipped] == [("u4", "ends 0.600 s after its recording r1 "
                                                                     "(max-overshoot 0.5)")]


@pytest.mark.parametrize("line, match", [
    ("r2 cat missing.wav |",
     r"wav\.scp:2 \(key r2\): `cat missing\.wav` failed \(exit status 1\): cat: missing\.wav: No such"),
    ("r2 true |", r"wav\.scp:2 \(key r2\): `true` failed \(no output\)"),
    ("r2 missing.wav", r"wav\.scp:2 \(key r2\): cannot read audio file 'missing\.wav': No such file"),
    ("r2 bad.wav", r"wav\.scp:2 \(key r2\): audio file 'bad\.wav': cannot decode"),
])
def test_a_failing_recording_is_one_line_naming_line_key_and_command(audio, line, match):
    d, _ = audio
    (d / "bad.wav").write_bytes(b"RIFF....not audio")
    scp = _scp(d, f"r1 a.wav\n{line}\n")
    out = d / "feats.ark"
    proc = run(["babelflow", "kaldi", "compute-feats", "fbank", f"scp:{scp}", f"ark:{out}"], d, check=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [e for e in proc.stderr.splitlines() if "error:" in e]
    assert len(errors) == 1 and __import__("re").search(match, errors[0]), proc.stderr
    assert not out.exists() and not list(d.glob(".feats.ark*"))  # nothing half-written


def test_check_config_runs_each_data_dirs_first_pipe(tmp_path):
    import yaml

    x = np.zeros(1600, np.int16)
    for name, first in (("good", "cat a.wav |"), ("bad", "cat nowhere.wav |")):
        d = tmp_path / "data" / name
        d.mkdir(parents=True)
        sf.write(tmp_path / "a.wav", x, 16000, subtype="PCM_16")
        (d / "wav.scp").write_text(f"r1 {first}\n")
        (d / "utt2spk").write_text("r1 s1\n")
        (d / "spk2utt").write_text("s1 r1\n")
        (tmp_path / "exp" / name / "ali").mkdir(parents=True)
    p = load_params(REPO / "params.yaml")
    for dirs in ({"good": "data/good"}, {"good": "data/good", "bad": "data/bad"}):
        q = copy.deepcopy(p)
        q["data"]["dirs"] = dirs
        q["tasks"] = {n: {"kind": "frame", "data": n, "ali": f"exp/{n}/ali"} for n in dirs}
        q["merge"]["weights"] = {}
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(q))
        proc = run(["babelflow", "check-config"], tmp_path, check=False)
        if "bad" not in dirs:
            assert proc.returncode == 0, proc.stderr
            assert "good: wav.scp pipes run (as shell commands, with your rights): cat" in proc.stdout
        else:
            assert proc.returncode == 1 and "Traceback" not in proc.stderr
            assert ("params.yaml: data.dirs.bad: data/bad/wav.scp:1 (key r1): `cat nowhere.wav` failed "
                    "(exit status 1)") in proc.stderr
