"""The feature store of utterance tasks over the same data sets: the same examples, the features once."""

from __future__ import annotations

import io
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from babelflow.egs.examples import nnet_examples
from babelflow.egs.kaldi_bridge import export_kaldi, show
from babelflow.egs.make import EgsOptions, TaskSource, egs_job, finalize_egs_dir
from babelflow.egs.reader import EgsDir
from babelflow.egs.store import write_store
from babelflow.errors import BabelflowError
from babelflow.kaldi.nnet_example import egs_to_text

SETS = ("en", "de")
TASKS = {"lang": "utt2lang", "gender": "utt2gender"}
OPTS = EgsOptions(valid_fraction=0.25, num_train_subset_utts=4, chunking="random", min_chunk=20, max_chunk=40,
                  left_context=4, right_context=3)  # float16, as params.yaml


def _sets(work: Path, feats: Path | None = None) -> list[tuple[str, Path, Path]]:
    return [(s, work / "data" / s, (feats or work / "feats") / s) for s in SETS]


def _build(work: Path, out: Path, shared: bool, opts: EgsOptions = OPTS, feats: Path | None = None) -> dict[str, Path]:
    store = out / "_store" / "de+en" if shared else None
    if store is not None:
        write_store(_sets(work, feats), store, opts.dtype, progress=False)
    dirs = {}
    for task, labels in TASKS.items():
        src = TaskSource(task, "utterance", _sets(work, feats), nj=2, labels=labels, store=store)
        for a in (1, 2):
            egs_job(src, a, out / task, opts, progress=False)
        finalize_egs_dir(src, out / task, opts)
        dirs[task] = out / task
    return dirs


@pytest.fixture(scope="module")
def both(tiny_features, tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return _build(tiny_features, root / "own", False), _build(tiny_features, root / "shared", True)


def _text(egs_dir: Path, part: str) -> str:
    return "".join(egs_to_text(k, eg) for k, eg in nnet_examples(EgsDir(egs_dir), part))


def test_shared_store_gives_the_same_examples(both, tmp_path):
    """`egs show` (and every part, and the Kaldi export) byte for byte as per-task storage: same
    archives, keys, order and inputs; only where the rows are stored differs."""
    own, shared = both
    for task in TASKS:
        a, b = own[task], shared[task]
        assert EgsDir(b).feats_store == b / ".." / "_store" / "de+en"
        for part in ("train", "valid", "train_diagnostic"):
            assert _text(a, part) == _text(b, part), (task, part)
        out_a, out_b = io.StringIO(), io.StringIO()
        assert show(str(a), out=out_a) == show(str(b), out=out_b) > 0
        assert out_a.getvalue() == out_b.getvalue()
        for name in ("egs.1.index", "valid.2.index", "train_diagnostic.1.index", "report.tsv", "valid_uttlist"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), (task, name)
        for j in (1, 2):  # the rows a shared archive names are its own per-task .feats, in order
            arch = EgsDir(b).archive("train", j)
            rows = np.concatenate([arch.feats[s:s + n] for s, n in zip(arch.seg_start, arch.seg_len)])
            assert rows.tobytes() == (a / f"egs.{j}.feats").read_bytes()
        export_kaldi(a, f"ark:{tmp_path / f'{task}.own.ark'}")
        export_kaldi(b, f"ark:{tmp_path / f'{task}.shared.ark'}")
        assert (tmp_path / f"{task}.own.ark").read_bytes() == (tmp_path / f"{task}.shared.ark").read_bytes()


def test_cmvn_is_applied_in_the_store(tiny_features, tmp_path):
    """With CMVN (per speaker, in each data set) the store holds what each task stored: same examples."""
    import shutil

    for s in SETS:  # the scp files name the archives by absolute path: a copy with other cmvn_opts
        shutil.copytree(tiny_features / "feats" / s, tmp_path / "feats" / s)
        (tmp_path / "feats" / s / "cmvn_opts").write_text("--norm-means=true --norm-vars=true\n")
    own = _build(tiny_features, tmp_path / "own", False, feats=tmp_path / "feats")
    shared = _build(tiny_features, tmp_path / "shared", True, feats=tmp_path / "feats")
    assert (tmp_path / "shared" / "_store" / "de+en" / "info" / "cmvn_opts").read_text().startswith("--norm-means=true")
    for task in TASKS:
        assert _text(own[task], "train") == _text(shared[task], "train")


def test_store_is_written_once(both, tiny_features):
    """The features are on disk once: in the store (every utterance of both sets, float16), none in the
    task dirs; per-task storage held them once per task (twice for train-diagnostic utterances)."""
    own, shared = both
    store = shared["lang"].parent / "_store" / "de+en"
    feats = sum(len(m) for s in SETS for m in kaldiio.load_scp(str(tiny_features / "feats" / s / "feats.scp")).values())
    assert (store / "store.feats").stat().st_size == feats * 40 * 2
    assert int((store / "info" / "num_rows").read_text()) == feats
    assert not [p for d in shared.values() for p in d.glob("*.feats")]

    def size(dirs: list[Path]) -> int:
        return sum(p.stat().st_size for d in dirs for p in d.rglob("*") if p.is_file())

    own_feats = sum(p.stat().st_size for d in own.values() for p in d.glob("*.feats"))
    assert own_feats >= 2 * feats * 40 * 2  # two tasks, each with every utterance (and the diagnostic copies)
    assert size(list(shared.values()) + [store]) < size(list(own.values())) - own_feats // 2 + 4096


def test_store_must_match_the_task(both, tiny_features, tmp_path):
    _, shared = both
    store = shared["lang"].parent / "_store" / "de+en"
    src = TaskSource("lang", "utterance", _sets(tiny_features), nj=2, labels="utt2lang", store=store)
    with pytest.raises(BabelflowError, match=r"feature store .* holds en,de .*feats_dtype float16.* float32"):
        egs_job(src, 1, tmp_path / "lang32", EgsOptions(**{**OPTS.__dict__, "dtype": "float32"}), progress=False)
    frame = TaskSource("en", "frame", _sets(tiny_features)[:1], nj=2, store=store)
    with pytest.raises(BabelflowError, match="a feature store is for utterance tasks"):
        egs_job(frame, 1, tmp_path / "en", OPTS, progress=False)
    one = tmp_path / "_store" / "en"
    write_store(_sets(tiny_features)[:1], one, "float16", progress=False)
    src = TaskSource("lang", "utterance", _sets(tiny_features), nj=2, labels="utt2lang", store=one)
    with pytest.raises(BabelflowError, match=r"holds en \(.*\), the task wants en,de"):
        egs_job(src, 1, tmp_path / "lang", OPTS, progress=False)


def test_stale_store_fails_on_open(both, tmp_path):
    import shutil

    _, shared = both
    root = tmp_path / "copy"
    shutil.copytree(shared["lang"].parent, root)
    feats = root / "_store" / "de+en" / "store.feats"
    with open(feats, "r+b") as f:
        f.truncate(feats.stat().st_size // 2)
    with pytest.raises(BabelflowError, match="do not hold the rows .* a stale feature store"):
        EgsDir(root / "lang").archive("train", 1)


def test_switching_to_the_store_removes_the_task_features(both, tiny_features, tmp_path):
    """A task dir written before the store keeps no stale copy of the features (the disk is the point)."""
    import shutil

    own, shared = both
    shutil.copytree(own["lang"], tmp_path / "lang")
    store = shared["lang"].parent / "_store" / "de+en"
    src = TaskSource("lang", "utterance", _sets(tiny_features), nj=2, labels="utt2lang", store=store)
    for a in (1, 2):
        egs_job(src, a, tmp_path / "lang", OPTS, progress=False)
    assert not list((tmp_path / "lang").glob("*.feats"))
