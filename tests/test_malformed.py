"""Malformed input, class by class, through the command line a rule runs.

Each case damages one input and runs the babelflow command that reads it: the command must
exit 1 with one error line (``babelflow <cmd>: error: ...``) that names the file and the
line or key, print no traceback, and leave no output (not even a temporary one) behind.
"""

from __future__ import annotations

import gzip
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from babelflow.nnet.checkpoint import save_task_model
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec

from .conftest import REPO, run
from .test_datadir import make_dir


@dataclass
class Case:
    cmd: Callable[[Path], list[str]]  # the command, given the case's folder
    damage: Callable[[Path], None]  # makes the input bad (inputs are built fresh per case)
    match: str  # what the error line must say (file and line or key, and what is wrong)
    out: str = "out"  # what must not exist afterwards


def _data(t: Path) -> None:
    make_dir(t)  # t/data: 14 utterances, 6 speakers, wav files in t/audio


def _lines(path: Path, fn) -> None:
    path.write_text("".join(line + "\n" for line in fn(path.read_text().splitlines())))


def _ali_dir(t: Path, lang0: Path) -> Path:
    d = t / "ali"
    d.mkdir()
    for f in ("final.mdl", "ali.1.gz", "num_jobs", "phones.txt"):
        shutil.copy(lang0 / f, d / f)
    return d


def _task_model(t: Path) -> Path:
    cfg = ModelConfig.from_dict({"layers": [{"dim": 8, "splice": [-1, 0, 1]}], "frame_head": {"hidden": []}})
    model = MultiTaskModel(cfg, 40, [TaskSpec("output", "frame", 18)], head_names=["output"])
    d = t / "model"
    d.mkdir()
    save_task_model(d, model, {"task": "en", "kind": "frame", "num_outputs": 18, "input_dim": 40, "ivector_dim": 0,
                               "left_context": 1, "right_context": 1, "priors": None})
    return d


def _blob_edit(t: Path, fn) -> None:
    path = t / "model" / "model.pt"
    blob = torch.load(path, weights_only=True)
    fn(blob)
    torch.save(blob, path)


def _feats_dir(t: Path, damage=None) -> None:
    _data(t)
    rng = np.random.default_rng(0)
    utts = [line.split()[0] for line in (t / "data" / "utt2spk").read_text().splitlines()]
    spks = sorted({line.split()[1] for line in (t / "data" / "utt2spk").read_text().splitlines()})
    feats = {u: rng.standard_normal((50, 13)).astype(np.float32) for u in utts}
    if damage:
        damage(feats)
    k = t / "kaldi"
    k.mkdir()
    kaldiio.save_ark(str(k / "raw.ark"), feats, scp=str(k / "feats.scp"))
    stats = {s: np.zeros((2, 14)) for s in spks}
    kaldiio.save_ark(str(k / "cmvn.ark"), stats, scp=str(k / "cmvn.scp"))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _params(t: Path, tasks: str = "", extra: str = "") -> None:
    """A user's params.yaml over one data dir and one alignment dir (the rest: schema defaults)."""
    _data(t)
    _ali_dir(t, LANG0)
    tasks = tasks or "  x: {kind: frame, data: x, ali: ali}\n"
    (t / "params.yaml").write_text(f"data:\n  dirs: {{x: data}}\ntasks:\n{tasks}merge:\n  weights: {{}}\n{extra}")


def _ivector_dir(t: Path, period: str) -> None:
    d = t / "iv"
    d.mkdir()
    kaldiio.save_ark(str(d / "ivector_online.ark"), {"A-00": np.zeros((5, 10), np.float32)},
                     scp=str(d / "ivector_online.scp"))
    (d / "ivector_period").write_text(period)


def _kaldi_egs(t: Path) -> None:
    d = t / "kegs"
    shutil.copytree(LANG0.parent / "egs" / "lang0" / "info", d / "info")
    (d / "egs.scp").write_text(f"en1-0 {d / 'egs.1.ark'}:6\n")


LANG0 = REPO.parent / "shared" / "kaldi-fixtures" / "lang0"
DATA = lambda t: ["data", "--nj", "1", str(t / "data"), str(t / "out")]  # noqa: E731
EGS_ALI = lambda t: ["egs", "ali", str(t / "ali"), str(t / "out")]  # noqa: E731
EXPORT = lambda t: ["export-kaldi", str(t / "model"), str(t / "out")]  # noqa: E731
CHECK = lambda t: ["check-config", str(t / "params.yaml")]  # noqa: E731
FEATS_IMPORT = lambda t: ["features", "--nj", "1", "--existing", str(t / "kaldi"), "--type", "mfcc",  # noqa: E731
                          str(t / "data"), str(t / "out")]

CASES = {
    # data dirs
    "crlf": Case(DATA, lambda t: (_data(t), (t / "data" / "utt2spk").write_bytes(
        (t / "data" / "utt2spk").read_bytes().replace(b"\n", b"\r\n"))), r"utt2spk:1 .*CR LF"),
    "bom": Case(DATA, lambda t: (_data(t), (t / "data" / "text").write_bytes(
        b"\xef\xbb\xbf" + (t / "data" / "text").read_bytes())), r"text:1 .*byte-order mark"),
    "utf8": Case(DATA, lambda t: (_data(t), (t / "data" / "text").write_bytes(
        (t / "data" / "text").read_bytes().replace(b"hello", b"caf\xe9", 2))), r"text:1 \(key '?A-00'?\).*not UTF-8"),
    "unsorted": Case(DATA, lambda t: (_data(t), _lines(t / "data" / "utt2spk", lambda ls: [ls[1], ls[0], *ls[2:]])),
                     r"utt2spk:2 .*A-00.*sorted"),
    # audio
    "audio": Case(DATA, lambda t: (_data(t), (t / "audio" / "A-01.wav").write_bytes(b"RIFF....WAVEjunk")),
                  r"wav\.scp:2 \(key '?A-01'?\).*A-01\.wav"),
    # alignments and transition models
    "ali_gz": Case(EGS_ALI, lambda t: (_ali_dir(t, LANG0), _truncate(t / "ali" / "ali.1.gz", 0.6)),
                   r"ali\.1\.gz"),
    "ali_tid": Case(EGS_ALI, lambda t: (_ali_dir(t, LANG0), (t / "ali" / "ali.1.gz").write_bytes(
        gzip.compress(b"en1 1 2 99999 3 \n"))), r"ali\.1\.gz.*en1.*99999"),
    "ali_jobs": Case(EGS_ALI, lambda t: (_ali_dir(t, LANG0), (t / "ali" / "num_jobs").write_text("2\n")),
                     r"ali\.2\.gz"),
    "mdl_cut": Case(EGS_ALI, lambda t: (_ali_dir(t, LANG0), _truncate(t / "ali" / "final.mdl", 0.05)),
                    r"final\.mdl"),
    "mdl_junk": Case(EGS_ALI, lambda t: (_ali_dir(t, LANG0), (t / "ali" / "final.mdl").write_text("<Nnet3> junk\n")),
                     r"final\.mdl.*TransitionModel"),
    # features (a Kaldi dir adopted as is)
    "feats_nan": Case(FEATS_IMPORT, lambda t: _feats_dir(t, lambda f: f["C-00"].__setitem__((7, 2), np.nan)),
                      r"utterance 'C-00': NaN in frame 7"),
    "feats_cut": Case(FEATS_IMPORT, lambda t: (_feats_dir(t), _truncate(t / "kaldi" / "raw.ark", 0.5)),
                      r"feats\.scp: utterance '[A-F]-\d\d' .*raw\.ark:\d+\): unreadable"),
    "feats_missing": Case(FEATS_IMPORT, lambda t: (_feats_dir(t), _lines(t / "kaldi" / "feats.scp", lambda ls: ls[1:])),
                          r"no features for .*'A-00'"),
    # egs (a Kaldi egs dir) and i-vectors
    "egs_missing": Case(lambda t: ["egs", "import-kaldi", str(t / "kegs"), str(t / "out")], _kaldi_egs,
                        r"kegs/egs\.scp:1: key 'en1-0': archive '.*egs\.1\.ark' not found"),
    "ivector_period": Case(CHECK, lambda t: (_params(t, "  x: {kind: frame, data: x, ali: ali, ivectors: iv}\n"),
                                             _ivector_dir(t, "ten\n")), r"iv/ivector_period: not an integer"),
    # configs
    "config_twice": Case(CHECK, lambda t: _params(t, "  x: {kind: frame, data: x, ali: ali}\n"
                                                     "  x: {kind: frame, data: x, ali: ali}\n"),
                         r"params\.yaml:5: 'x' given twice \(also on line 4\)"),
    "config_weight": Case(CHECK, lambda t: (_params(t), _lines(t / "params.yaml", lambda ls: [
        line.replace("weights: {}", "weights: {x: 1.0, klingon: 1.0}") for line in ls])),
                          r"params\.yaml: merge\.weights\.klingon: no such task"),
    "config_ali": Case(CHECK, lambda t: _params(t, "  x: {kind: frame, data: x, ali: nowhere}\n"),
                       r"params\.yaml: tasks\.x\.ali: alignment dir 'nowhere' not found"),
    # models
    "model_cut": Case(EXPORT, lambda t: (_task_model(t), _truncate(t / "model" / "model.pt")),
                      r"model\.pt: not a babelflow task model"),
    "model_key": Case(EXPORT, lambda t: (_task_model(t), _blob_edit(t, lambda b: b.pop("input_dim"))),
                      r"model\.pt: .*input_dim"),
    "model_shape": Case(EXPORT, lambda t: (_task_model(t), _blob_edit(t, lambda b: b["state_dict"].__setitem__(
        "heads.output.output.weight", torch.zeros(5, 5)))), r"model\.pt: .*heads\.output\.output\.weight"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_malformed_input_is_one_line_naming_file_and_key_with_nothing_left(name, tmp_path):
    if "ali" in CASES[name].cmd(tmp_path)[1:2] and not LANG0.is_dir():
        pytest.skip(f"real Kaldi fixtures not present at {LANG0}")
    case = CASES[name]
    case.damage(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    proc = run(["babelflow", *case.cmd(tmp_path)], tmp_path, check=False)
    lines = [line for line in proc.stderr.splitlines() if "error" in line.lower()]
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr  # progress bars aside: one line
    err = lines[0]
    assert err.startswith("babelflow ") and ": error: " in err, err
    assert re.search(case.match, err), err
    assert not (tmp_path / case.out).exists()
    assert {p for p in tmp_path.rglob("*")} == before, "a temporary file was left behind"
