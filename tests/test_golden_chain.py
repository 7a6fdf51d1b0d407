"""The demo-sized chain gives the same results from one change to the next.

``tests/golden/tiny_chain.json`` holds, from a run on this machine kind, the sha256 of every
artifact the data path writes (features, egs archives, the merged schedule) and of the
models, sums of the float artifacts, and both metrics files. It was recorded after the structure
refactor had been checked byte-identical with commit 3cbe749 on every file under exp/
(``recorded_by`` says when it was last re-recorded, and why). Refactoring plumbing must not
change the data path: integer/text artifacts are compared byte for byte, float ones to 1e-5
(float rounding may differ on another CPU); the models by their metrics, which such rounding
could move by a frame or two, never more. A deliberate change of results re-records the file and says why.
Voices f2/f3 are left out: espeak-ng's breathy variants were not reproducible run to run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import project_copy, run
from .test_pipeline import TINY

pytestmark = pytest.mark.slow

GOLDEN = json.loads((Path(__file__).parent / "golden" / "tiny_chain.json").read_text())
MODEL_FILES = ("final.pt", "model.pt", "final.mdl", "priors.txt")


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    # the chain as recorded: no low-resource language, no GMM baselines (neither touches what is compared)
    # bf16 steps pinned: `auto` would give fp32 on a CPU without native bf16, another model than recorded
    proj = project_copy(tmp_path_factory.mktemp("golden"), **{**TINY, "demo__voices": ["m1", "m2", "f1", "f4"],
                                                              "demo__low_resource": {}, "decode__gmm": False,
                                                              "train__precision": "bf16"})
    run(["snakemake", "--cores", "2"], proj)
    return proj


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _float_stats(proj: Path, rel: str) -> dict:
    import kaldiio
    import numpy as np

    path = proj / rel
    if rel.endswith(".feats"):  # raw little-endian rows of the egs dir's info/feats_dtype
        dtype = (path.parent / "info" / "feats_dtype").read_text().strip()
        x = np.frombuffer(_egs_feats(path), np.dtype(dtype).newbyteorder("<")).astype(np.float64)
    else:
        x = np.concatenate([np.asarray(m, np.float64).ravel() for _, m in kaldiio.load_ark(str(path))])
    return {"n": int(x.size), "sum": float(x.sum()), "l1": float(np.abs(x).sum())}


def _egs_feats(path: Path) -> bytes:
    """An archive's features as per-task storage wrote them (recorded so): its own ``.feats``, or
    the rows of the shared feature store its segments name, in segment order (what its readers read)."""
    if path.is_file():
        return path.read_bytes()
    from babelflow.egs.reader import PARTS, EgsDir

    egs = EgsDir(path.parent)
    assert egs.feats_store is not None, path  # utterance tasks over the same data sets share a store
    prefix, number, _ = path.name.split(".")
    arch = egs.archive({v: k for k, v in PARTS.items()}[prefix], int(number))
    return b"".join(arch.feats[s:s + n].tobytes() for s, n in zip(arch.seg_start, arch.seg_len))


def test_data_path_is_the_same(chain):
    """Integer and text artifacts (egs indexes and labels, pdf alignments, the merged schedule) byte for
    byte; float ones (features, CMVN stats, stored egs features) by sum and L1 norm to 1e-5: another CPU's
    FFT may round a last bit differently, a changed data path moves these by far more."""
    floats = GOLDEN["float_stats"]
    data = {k: v for k, v in GOLDEN["sha256"].items() if not k.endswith(MODEL_FILES) and k not in floats}
    assert len(data) > 40 and len(floats) > 20
    changed = [k for k, v in data.items() if not (chain / k).is_file() or _sha(chain / k) != v]
    assert changed == []
    for task in ("lang", "gender"):  # their features are stored once, for both
        assert not list((chain / "exp" / "egs" / task).glob("*.feats"))
    for rel, want in floats.items():
        got = _float_stats(chain, rel)
        assert got["n"] == want["n"], rel
        assert got["sum"] == pytest.approx(want["sum"], rel=1e-5, abs=1e-3), rel
        assert got["l1"] == pytest.approx(want["l1"], rel=1e-5), rel


def test_metrics_are_the_same(chain):
    for name, golden in (("train", GOLDEN["train_metrics"]), ("models", GOLDEN["model_metrics"])):
        got = json.loads((chain / "exp" / name / "metrics.json").read_text())
        assert got.keys() == golden.keys()
        for task, values in golden.items():
            for key, want in values.items():
                tol = 0.0 if "baseline" in key or "frames" in key or "utterances" in key else 0.02
                assert got[task][key] == pytest.approx(want, abs=tol), (name, task, key)
