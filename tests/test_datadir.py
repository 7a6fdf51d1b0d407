"""Data dir validation and speaker splitting (Kaldi validate_data_dir.sh / split_data.sh)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from babelflow.data.datadir import DataDir, validate_data_dir
from babelflow.data.split import prepare_data_dir, split_data, split_keys_by_speaker
from babelflow.errors import BabelflowError

SPK_COUNTS = {"A": 5, "B": 1, "C": 1, "D": 1, "E": 4, "F": 2}


def write_wav(path: Path, secs: float = 0.5, sr: int = 16000) -> Path:
    rng = np.random.default_rng(0)
    sf.write(path, (rng.standard_normal(int(secs * sr)) * 3000).astype(np.int16), sr, subtype="PCM_16")
    return path


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def make_dir(root: Path, counts: dict[str, int] = SPK_COUNTS) -> Path:
    """Per-utterance wavs (no segments); utt ids prefixed by speaker so both sort orders agree."""
    d, audio = root / "data", root / "audio"
    d.mkdir()
    audio.mkdir()
    utts = [(f"{s}-{i:02d}", s) for s, n in counts.items() for i in range(n)]
    write_lines(d / "wav.scp", [f"{u} {write_wav(audio / (u + '.wav'))}" for u, _ in utts])
    write_lines(d / "utt2spk", [f"{u} {s}" for u, s in utts])
    write_lines(d / "spk2utt", [f"{s} " + " ".join(u for u, s2 in utts if s2 == s) for s in counts])
    write_lines(d / "text", [f"{u} hello  world {i}" for i, (u, _) in enumerate(utts)])
    write_lines(d / "utt2lang", [f"{u} {'en' if s < 'D' else 'sw'}" for u, s in utts])
    return d


def make_seg_dir(root: Path) -> Path:
    """Two 1 s recordings cut into segments, speaker per recording."""
    d, audio = root / "data", root / "audio"
    d.mkdir()
    audio.mkdir()
    write_lines(d / "wav.scp", [f"r{i} {write_wav(audio / f'r{i}.wav', secs=1.0)}" for i in (1, 2)])
    segs = [("s1-a", "r1", 0.0, 0.5), ("s1-b", "r1", 0.5, 1.0), ("s2-a", "r2", 0.1, 0.9)]
    write_lines(d / "segments", [f"{u} {r} {b:.2f} {e:.2f}" for u, r, b, e in segs])
    write_lines(d / "utt2spk", ["s1-a s1", "s1-b s1", "s2-a s2"])
    write_lines(d / "spk2utt", ["s1 s1-a s1-b", "s2 s2-a"])
    return d


def edit(path: Path, fn) -> None:
    write_lines(path, fn(path.read_text().splitlines()))


def assert_error(d: Path, *parts: str, check_audio: bool = True) -> str:
    with pytest.raises(BabelflowError) as ei:
        DataDir.load(d, check_audio=check_audio)
    msg = str(ei.value)
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------------- valid dirs


def test_valid_dir_loads(tmp_path):
    d = make_dir(tmp_path)
    data = DataDir.load(d)
    assert data.utts == sorted(data.utt2spk) and len(data.utts) == 14
    assert data.spk2utt["E"] == ["E-00", "E-01", "E-02", "E-03"]
    assert data.labels == {"lang": {u: ("en" if u < "D" else "sw") for u in data.utts}}
    assert data.text["A-00"] == "hello  world 0"  # transcript spacing preserved
    assert data.segments is None
    summary = validate_data_dir(d)
    assert summary == {"num_utts": 14, "num_spks": 6, "num_recordings": 14, "has_segments": False,
                       "labels": ["lang"], "sample_rates": [16000], "pipes": 0, "ignored_files": [], "skipped": []}


def test_split_keys_matches_split_scp():
    # Hand-run of split_scp.pl --utt2spk with speaker sizes A5 B1 C1 D1 E4 F2 into 3 jobs:
    # initial spk_idx*3//6 -> [A,B]=6 [C,D]=2 [E,F]=6.  Pass 1: job1's last speaker B moves
    # to job2 since |(2+1)-(6-1)|=2 < |2-6|=4 -> [A]=5 [B,C,D]=3 [E,F]=6; no other move helps
    # (D->job3: |7-2|=5 !< 3; B->job1: |2-6|=4 !< 2; E->job2: |2-7|=5 !< 3).  Pass 2: no change.
    utt2spk = {f"{s}-{i:02d}": s for s, n in SPK_COUNTS.items() for i in range(n)}
    jobs = split_keys_by_speaker(utt2spk, 3)
    spk_jobs = [sorted({utt2spk[u] for u in job}) for job in jobs]
    assert spk_jobs == [["A"], ["B", "C", "D"], ["E", "F"]]
    assert [len(j) for j in jobs] == [5, 3, 6]
    assert sum(jobs, []) == list(utt2spk)  # contiguous, file order kept, nothing lost


def test_split_keys_simple_cases():
    utt2spk = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "c1": "c", "c2": "c"}
    assert split_keys_by_speaker(utt2spk, 1) == [list(utt2spk)]
    # initial [a,b]=4 [c]=2; moving b gives |3-3|=0 < 2 -> [a]=3 [b,c]=3
    assert split_keys_by_speaker(utt2spk, 2) == [["a1", "a2", "a3"], ["b1", "c1", "c2"]]
    with pytest.raises(BabelflowError, match="number of speakers 3 is less than the number of jobs 4"):
        split_keys_by_speaker(utt2spk, 4)


def test_split_data_writes_complete_subsets(tmp_path):
    data = DataDir.load(make_dir(tmp_path))
    dirs = split_data(data, 3, tmp_path / "out")
    assert dirs == [tmp_path / "out" / "split3" / str(j) for j in (1, 2, 3)]
    seen_spks: set[str] = set()
    for d, spks in zip(dirs, [{"A"}, {"B", "C", "D"}, {"E", "F"}]):
        sub = DataDir.load(d)  # each subset is itself a valid data dir
        assert set(sub.spk2utt) == spks and not spks & seen_spks
        seen_spks |= spks
        assert set(sub.wav) == set(sub.utt2spk) == set(sub.text) == set(sub.labels["lang"])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["split3"]  # no temp leftovers


def test_split_with_segments_restricts_wav(tmp_path):
    data = DataDir.load(make_seg_dir(tmp_path))
    assert data.segments["s2-a"] == ("r2", 0.1, 0.9)
    d1, d2 = split_data(data, 2, tmp_path / "out")
    assert (d1 / "wav.scp").read_text().split()[0] == "r1" and len((d1 / "wav.scp").read_text().splitlines()) == 1
    assert (d2 / "segments").read_text() == "s2-a r2 0.1 0.9\n"
    assert DataDir.load(d2).wav.keys() == {"r2"}


def test_split_fewer_speakers_than_jobs(tmp_path):
    data = DataDir.load(make_dir(tmp_path))
    with pytest.raises(BabelflowError) as ei:
        split_data(data, 7, tmp_path / "out")
    assert "utt2spk" in str(ei.value) and "number of speakers 6 is less than the number of jobs 7" in str(ei.value)
    assert not (tmp_path / "out" / "split7").exists()


def test_prepare_data_dir(tmp_path):
    src = make_dir(tmp_path)
    out = tmp_path / "prepared"
    summary = prepare_data_dir(src, out, 3)
    assert summary["nj"] == 3 and summary["num_utts"] == 14
    assert (out / "info" / "num_utts").read_text() == "14\n"
    assert (out / "info" / "num_spks").read_text() == "6\n"
    assert (out / "info" / "nj").read_text() == "3\n"
    for name in ("wav.scp", "utt2spk", "spk2utt", "text", "utt2lang"):
        assert (out / name).read_text() == (src / name).read_text(), name
    assert sorted(p.name for p in (out / "split3").iterdir()) == ["1", "2", "3"]
    with pytest.raises(BabelflowError):
        prepare_data_dir(src, tmp_path / "bad", 7)
    assert not (tmp_path / "bad").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_write_roundtrip_and_stale_files(tmp_path):
    data = DataDir.load(make_dir(tmp_path))
    out = tmp_path / "copy"
    data.write(out)
    again = DataDir.load(out)
    assert {**again.__dict__, "path": None} == {**data.__dict__, "path": None}
    data.text = None
    data.labels = {}
    data.write(out)
    assert not (out / "text").exists() and not (out / "utt2lang").exists()


def test_spk2gender_and_utt2dur_carried_into_split(tmp_path):
    d = make_dir(tmp_path, {"A": 2, "B": 1})
    write_lines(d / "spk2gender", ["A f", "B m"])
    write_lines(d / "utt2dur", ["A-00 0.50", "A-01 0.5", "B-00 0.5"])
    data = DataDir.load(d)
    assert data.extra == {"utt2dur": {"A-00": "0.50", "A-01": "0.5", "B-00": "0.5"}}
    assert "dur" not in data.labels and data.spk2gender == {"A": "f", "B": "m"}
    d1, d2 = split_data(data, 2, tmp_path / "out")
    assert (d1 / "utt2dur").read_text() == "A-00 0.50\nA-01 0.5\n"
    assert (d2 / "spk2gender").read_text() == "B m\n"
    write_lines(d / "utt2dur", ["A-00 0.50", "A-01 -1", "B-00 0.5"])
    assert_error(d, "utt2dur:2", "'A-01'", "positive number")
    (d / "utt2dur").unlink()
    write_lines(d / "spk2gender", ["A f", "B x"])
    assert_error(d, "spk2gender:2", "'B'", "'m' or 'f'")


def test_pipe_entry_not_run(tmp_path):
    d = make_dir(tmp_path, {"A": 1, "B": 1})
    marker = tmp_path / "ran"
    edit(d / "wav.scp", lambda ls: [ls[0], f"B-00 sh -c 'touch {marker}'  && cat x.wav |"])
    data = DataDir.load(d)
    assert data.wav["B-00"] == f"sh -c 'touch {marker}'  && cat x.wav |"
    assert validate_data_dir(d)["pipes"] == 1
    assert validate_data_dir(d)["sample_rates"] == [16000]
    assert not marker.exists()


def test_check_audio_false_skips_files(tmp_path):
    d = make_dir(tmp_path, {"A": 1, "B": 1})
    (tmp_path / "audio" / "A-00.wav").unlink()
    assert validate_data_dir(d, check_audio=False)["num_utts"] == 2
    assert_error(d, "wav.scp:1", "'A-00'", "not found")


# ------------------------------------------------------------------------ malformed dirs


def test_unsorted_utt2spk(tmp_path):
    d = make_dir(tmp_path)
    edit(d / "utt2spk", lambda ls: [ls[1], ls[0], *ls[2:]])
    assert_error(d, "utt2spk:2", "'A-00'", "not sorted")


def test_duplicate_key(tmp_path):
    d = make_dir(tmp_path)
    edit(d / "utt2lang", lambda ls: [ls[0], ls[1], ls[1], *ls[2:]])
    assert_error(d, "utt2lang:3", "'A-01'", "duplicate")


def test_utt2spk_not_sorted_by_speaker(tmp_path):
    d = make_dir(tmp_path, {"A": 1, "B": 1})
    edit(d / "utt2spk", lambda ls: ["A-00 z", "B-00 B"])
    edit(d / "spk2utt", lambda ls: ["B B-00", "z A-00"])
    assert_error(d, "utt2spk:2", "'B-00'", "prefixes of utterance ids")


def test_utt2spk_wrong_field_count(tmp_path):
    d = make_dir(tmp_path)
    edit(d / "utt2spk", lambda ls: [ls[0] + " extra", *ls[1:]])
    assert_error(d, "utt2spk:1", "'A-00'", "at most 2 fields")


def test_spk2utt_missing_has_hint(tmp_path):
    d = make_dir(tmp_path)
    (d / "spk2utt").unlink()
    assert_error(d, "spk2utt", "utils/utt2spk_to_spk2utt.pl")


def test_empty_utt2spk(tmp_path):
    d = make_dir(tmp_path)
    (d / "utt2spk").write_text("")
    assert_error(d, "utt2spk", "empty file")


def test_spk2utt_inconsistent(tmp_path):
    d = make_dir(tmp_path)
    # move B-00 from speaker B to speaker C in spk2utt only
    edit(d / "spk2utt", lambda ls: [ls[0], "B C-00", "C B-00", *ls[3:]])
    assert_error(d, "spk2utt:2", "'B'", "'C-00'", "do not match")


def test_missing_text_line(tmp_path):
    d = make_dir(tmp_path)
    edit(d / "text", lambda ls: [l for l in ls if not l.startswith("C-00")])
    assert_error(d, "text", "missing utterance 'C-00'", "utt2spk:7")


def test_extra_key_in_utt2lang(tmp_path):
    d = make_dir(tmp_path)
    edit(d / "utt2lang", lambda ls: [*ls, "Z-99 en"])
    assert_error(d, "utt2lang:15", "'Z-99'", "not present")


def test_wav_path_missing(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "audio" / "E-02.wav").unlink()
    assert_error(d, "wav.scp:11", "'E-02'", "not found")


def test_unreadable_wav(tmp_path):
    d = make_dir(tmp_path)
    (tmp_path / "audio" / "B-00.wav").write_bytes(np.random.default_rng(1).bytes(4000))
    msg = assert_error(d, "wav.scp:6", "'B-00'", "cannot read audio")
    assert "Traceback" not in msg


def test_relative_wav_path_resolves_against_cwd(tmp_path, monkeypatch):
    d = make_dir(tmp_path, {"A": 1, "B": 1})
    edit(d / "wav.scp", lambda ls: ["A-00 audio/A-00.wav", "B-00 audio/B-00.wav"])
    monkeypatch.chdir(tmp_path)
    assert DataDir.load(d).wav["A-00"] == "audio/A-00.wav"
    monkeypatch.chdir(d)
    assert_error(d, "wav.scp:1", "'A-00'", "relative to the working directory")


def test_a_segment_past_its_recording_is_skipped_and_listed_as_extract_segments_does(tmp_path):
    d = make_seg_dir(tmp_path)
    # 0.51 s past the end (> --max-overshoot 0.5): skipped; 0.4 s past: kept (extract-segments clips it)
    edit(d / "segments", lambda ls: [ls[0], "s1-b r1 0.50 1.51", "s2-a r2 0.10 1.40"])
    info = prepare_data_dir(d, tmp_path / "out", 1)
    assert [u for u, _ in info["skipped"]] == ["s1-b"]
    out = tmp_path / "out"
    assert "s1-b" not in (out / "utt2spk").read_text() and "s2-a" in (out / "segments").read_text()
    rows = (out / "skipped.tsv").read_text().splitlines()
    assert rows[0] == "utterance\treason" and rows[1].startswith("s1-b\t")
    assert "segments:2: segment 0.5-1.51 s, recording 'r1' ends at 1.000 s" in rows[1]
    assert (out / "info" / "num_skipped").read_text().strip() == "1"
    assert (out / "info" / "num_utts").read_text().strip() == "2"
    # every segment past its recording: nothing to keep, one clear error, nothing written
    edit(d / "segments", lambda ls: ["s1-a r1 1.60 1.70", "s1-b r1 1.70 1.80", "s2-a r2 1.60 1.90"])
    with pytest.raises(BabelflowError, match=r"every segment would be skipped, e\.g\. .*segments:1"):
        prepare_data_dir(d, tmp_path / "out2", 1)
    assert not (tmp_path / "out2").exists()


def test_segment_start_not_before_end(tmp_path):
    d = make_seg_dir(tmp_path)
    edit(d / "segments", lambda ls: [ls[0], "s1-b r1 0.80 0.80", ls[2]])
    assert_error(d, "segments:2", "'s1-b'", "start < end")


def test_segment_unknown_recording(tmp_path):
    d = make_seg_dir(tmp_path)
    edit(d / "segments", lambda ls: [*ls[:2], "s2-a r9 0.1 0.9"])
    assert_error(d, "segments:3", "'s2-a'", "recording 'r9' not in")


def test_no_trailing_newline(tmp_path):
    d = make_dir(tmp_path)
    (d / "text").write_text((d / "text").read_text().rstrip("\n"))
    assert_error(d, "text:14", "'F-01'", "trailing newline")


@pytest.mark.parametrize("file, damage, match", [
    ("text", lambda b: b.replace(b"\n", b"\r\n"), r"text:1 \(key 'A-00'\): Windows line end \(CR LF\)"),
    ("wav.scp", lambda b: b"\xef\xbb\xbf" + b, r"wav\.scp:1 \(key 'A-00'\): starts with a UTF-8 byte-order mark"),
    ("text", lambda b: b.replace(b"hello  world 2", b"hello \xff world 2"),
     r"text:3 \(key 'A-02'\): not UTF-8 \(invalid start byte at column 12\)"),
])
def test_text_file_damage_is_one_line_naming_file_line_and_key(tmp_path, file, damage, match):
    import re
    import subprocess
    import sys

    d = make_dir(tmp_path)
    (d / file).write_bytes(damage((d / file).read_bytes()))
    proc = subprocess.run([sys.executable, "-m", "babelflow.cli", "data", str(d), str(tmp_path / "out")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(match, lines[0]), proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))
