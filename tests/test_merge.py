"""`babelflow merge`: Kaldi's combine_egs.sh allocation, the merged dir, and merged `egs show`."""

from __future__ import annotations

import io
import math
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from babelflow.egs.examples import merged_nnet_examples
from babelflow.egs.format import INDEX_DTYPE
from babelflow.egs.kaldi_bridge import import_kaldi, show
from babelflow.egs.merged import Block, MergedDir, is_merged_dir
from babelflow.errors import BabelflowError
from babelflow.kaldi.general_matrix import SparseMatrix
from babelflow.kaldi.nnet_example import NnetExample, NnetIo, read_egs, write_egs
from babelflow.merge import MergeOptions, MergeTask, allocate, sampler_counts
from babelflow.merge import merge_egs as _merge_egs


# ----------------------------------------------------------------------------- helpers
def _fake_egs(path: Path, sizes: list[int], kind: str = "frame", frames: int = 8, **info) -> Path:
    """An egs dir reduced to what merge reads: info/ and the archives' index files."""
    (path / "info").mkdir(parents=True)
    base = dict(feat_dim=40, left_context=16, right_context=12, left_context_initial=-1, right_context_final=-1,
                frames_per_eg=frames if kind == "frame" else 0, num_archives=len(sizes), ivector_dim=0, kind=kind,
                num_egs=sum(sizes), cmvn_opts="--norm-means=false --norm-vars=false")
    base["num_pdfs" if kind == "frame" else "num_classes"] = 10
    base.update(info)
    for k, v in base.items():
        (path / "info" / k).write_text(f"{v}\n")
    for j, n in enumerate(sizes, 1):
        rec = np.zeros(n, INDEX_DTYPE)
        rec["n"] = frames
        rec.tofile(path / f"egs.{j}.index")
    return path

def merge_egs(dirs, out, weights=None, task_names=None, seed=0, **opts):
    """The tests' shorthand: parallel lists -> MergeTasks, keyword options -> MergeOptions."""
    names = task_names or [Path(d).name for d in dirs]
    tasks = [MergeTask(n, d, w) for n, d, w in zip(names, dirs, weights or [1.0] * len(dirs), strict=True)]
    return _merge_egs(tasks, out, MergeOptions(**opts), seed=seed)



def _entries(text: str) -> list[str]:
    """Split an `ark,t` dump into its entries (`key <Nnet3Eg> ... </Nnet3Eg> `)."""
    out = re.findall(r"\S+ <Nnet3Eg>.*?</Nnet3Eg> ", text, re.S)
    assert "".join(out) == text
    return out


def _as_merged(entry: str, task: int, weight: float) -> str:
    """What `nnet3-copy-egs --outputs --weights` makes of one eg's text: `output` renamed
    `output-<task>`, each sparse target value times the weight (float32; here exact)."""
    assert entry.count("<NnetIo> output ") == 1
    entry = entry.replace("<NnetIo> output ", f"<NnetIo> output-{task} ")
    scaled = {"1": "0.5", "0.5": "0.25"} if weight == 0.5 else {"1": "1", "0.5": "0.5"}
    return re.sub(r"dim=18 \[ (\d+) (\S+) \]", lambda m: f"dim=18 [ {m[1]} {scaled[m[2]]} ]", entry)


def _show(source) -> str:
    buf = io.StringIO()
    show(str(source), buf)
    return buf.getvalue()


@pytest.fixture()
def lang0_twice(kaldi_fixtures, tmp_path) -> tuple[Path, Path, str]:
    """The Kaldi fixture egs (28 egs, 18 pdfs, context 4/4) imported as two tasks."""
    ark = kaldi_fixtures / "egs" / "lang0" / "egs.1.ark"
    for name in ("a", "b"):
        import_kaldi(f"ark:{ark}", tmp_path / name)
    return tmp_path / "a", tmp_path / "b", (kaldi_fixtures / "egs" / "lang0" / "egs.1.txt").read_text()


# ----------------------------------------------------------------------------- allocation
def test_allocate_hand_worked_like_kaldis_script():
    # allocate_multilingual_examples.py: for archive a, blocks = int(round((remaining / block_size) /
    # remaining_archives)) (Python 3 round: half to even); each block takes <= block_size next egs of the
    # task whose remaining/total is largest (max() keeps the first: ties go to the lowest index); then a
    # flush round of num_tasks blocks is appended to the last archive.
    #
    # counts [10, 6], 2 archives, block 4: 16 egs.
    #   archive 1: round((16/4)/2) = 2 blocks. fractions [1, 1] -> task 0 egs 0..3 (left [6, 6]);
    #              [0.6, 1] -> task 1 egs 0..3 (left [6, 2]).
    #   archive 2: round((8/4)/1) = 2 blocks. [0.6, 0.33] -> task 0 egs 4..7 (left [2, 2]);
    #              [0.2, 0.33] -> task 1 egs 4..5, a short block: its tail (left [2, 0]).
    #   flush (2 blocks, last archive): [0.2, 0] -> task 0 egs 8..9; then nothing is left (empty block dropped).
    assert allocate([10, 6], 2, 4) == [[(0, 0, 4), (1, 0, 4)], [(0, 4, 4), (1, 4, 2), (0, 8, 2)]]
    # counts [7, 3], 2 archives, block 2: 10 egs.
    #   archive 1: (10/2)/2 = 2.5 -> round() = 2 (half to even; round-half-up would give 3).
    #              [1, 1] -> task 0 egs 0..1 (left [5, 3]); [0.71, 1] -> task 1 egs 0..1 (left [5, 1]).
    #   archive 2: round(6/2) = 3 blocks. [0.71, 0.33] -> task 0 egs 2..3; [0.43, 0.33] -> task 0 egs 4..5;
    #              [0.14, 0.33] -> task 1 eg 2 (tail, 1 eg) (left [1, 0]).
    #   flush: [0.14, 0] -> task 0 eg 6.
    assert allocate([7, 3], 2, 2) == [[(0, 0, 2), (1, 0, 2)], [(0, 2, 2), (0, 4, 2), (1, 2, 1), (0, 6, 1)]]
    # counts [5, 5, 2], 2 archives, block 2: three-way ties at the start go 0, 1, 2.
    #   archive 1: round(6/2) = 3: task 0 egs 0..1, task 1 egs 0..1 ([0.6, 0.6, 1]), task 2 egs 0..1 (all of it).
    #   archive 2: round(3/1) = 3: [0.6, 0.6, 0] -> task 0 egs 2..3; [0.2, 0.6, 0] -> task 1 egs 2..3;
    #              [0.2, 0.2, 0] -> task 0 eg 4 (tail).  flush: [0, 0.2, 0] -> task 1 eg 4.
    assert allocate([5, 5, 2], 2, 2) == [[(0, 0, 2), (1, 0, 2), (2, 0, 2)],
                                         [(0, 2, 2), (1, 2, 2), (0, 4, 1), (1, 4, 1)]]


def test_allocate_uses_every_example_once_and_tasks_finish_together():
    rng = random.Random(5)
    for _ in range(300):
        counts = [rng.randint(1, rng.choice([10, 500, 5000])) for _ in range(rng.randint(1, 5))]
        bs, archives = rng.choice([1, 3, 16, 256]), rng.randint(1, 12)
        plan = allocate(counts, archives, bs)
        assert len(plan) == archives
        nxt = [0] * len(counts)
        left = list(counts)
        bound = max(min(bs, n) / n for n in counts)
        for arch in plan:
            for t, first, count in arch:
                assert first == nxt[t] and 0 < count <= bs  # each task's egs in its order, no gap, no repeat
                nxt[t] += count
                left[t] -= count
                frac = [r / n for r, n in zip(left, counts)]
                assert max(frac) - min(frac) <= bound * (1 + 1e-9)  # consumed fractions stay balanced
        assert nxt == counts  # every example exactly once


def test_allocate_archive_sizes_follow_the_rounding():
    plan = allocate([400_000, 300_000, 200_000, 100_000], 4, 256)
    sizes = [sum(c for _, _, c in a) for a in plan]
    assert sum(sizes) == 1_000_000 and max(sizes) - min(sizes) <= 2 * 256
    with pytest.raises(BabelflowError):
        allocate([10], 0, 4)


def test_sampler_shares():
    assert sampler_counts([900, 100]) == [900, 100]
    assert sampler_counts([900, 100], "uniform") == [500, 500]
    assert sampler_counts([901, 100], "uniform") == [501, 500]  # largest remainder, ties to the lowest task
    assert sampler_counts([900, 100], "temperature", 1.0) == [900, 100]
    # T = 2: p ∝ sqrt(n) = 30 : 10
    assert sampler_counts([900, 100], "temperature", 2.0) == [750, 250]
    t = sampler_counts([1000, 10, 1], "temperature", 1e9)  # T -> inf approaches uniform
    assert sum(t) == 1011 and max(t) - min(t) <= 1
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(BabelflowError, match="temperature"):
            sampler_counts([1, 2], "temperature", bad)


# ----------------------------------------------------------------------------- merged dir
def test_merged_dir_layout(tmp_path):
    a = _fake_egs(tmp_path / "a", [5, 7])  # 12 egs in 2 archives: blocks can straddle them
    b = _fake_egs(tmp_path / "b", [6], kind="utterance", frames=3)
    info = merge_egs([a, b], tmp_path / "m", weights=[1.0, 0.25], block_size=4)
    m = tmp_path / "m"
    assert is_merged_dir(m) and info["num_archives"] == 3 and info["num_egs"] == 18
    read = lambda name: (m / "info" / name).read_text().strip()
    assert {k: read(k) for k in ("num_tasks", "num_archives", "feat_dim", "ivector_dim", "left_context",
                                 "right_context", "left_context_initial", "right_context_final",
                                 "frames_per_eg", "sampler", "block_size")} == {
        "num_tasks": "2", "num_archives": "3", "feat_dim": "40", "ivector_dim": "0", "left_context": "16",
        "right_context": "12", "left_context_initial": "-1", "right_context_final": "-1",
        "frames_per_eg": "8", "sampler": "kaldi", "block_size": "4"}
    assert (m / "cmvn_opts").read_text().strip() == read("cmvn_opts") == "--norm-means=false --norm-vars=false"
    tasks = pd.read_csv(m / "tasks.tsv", sep="\t")
    assert list(tasks.columns) == ["index", "name", "egs_dir", "kind", "num_outputs", "weight", "num_egs"]
    assert tasks.to_dict("list") == {"index": [0, 1], "name": ["a", "b"], "egs_dir": [str(a), str(b)],
                                     "kind": ["frame", "utterance"], "num_outputs": [10, 10],
                                     "weight": [1.0, 0.25], "num_egs": [12, 6]}
    # 18 egs, 3 archives, block 4: archive 1 round(4.5/3)=2 blocks, archive 2 round(2.5/2)=1 (half to even),
    # archive 3 round(1.5)=2, flush 0. Task a's 2nd block (egs 4..7) is egs.1 eg 4 + egs.2 egs 0..2.
    blocks = pd.read_csv(m / "egs.1.blocks.tsv", sep="\t")
    assert list(blocks.columns) == ["block", "task", "output", "weight", "src_archive", "first", "count"]
    assert blocks.values.tolist() == [[0, 0, "output-0", 1.0, 1, 0, 4], [1, 1, "output-1", 0.25, 1, 0, 4]]
    assert pd.read_csv(m / "egs.2.blocks.tsv", sep="\t").values.tolist() == [
        [0, 0, "output-0", 1.0, 1, 4, 1], [0, 0, "output-0", 1.0, 2, 0, 3]]
    assert pd.read_csv(m / "egs.3.blocks.tsv", sep="\t").values.tolist() == [
        [0, 0, "output-0", 1.0, 2, 3, 4], [1, 1, "output-1", 0.25, 1, 4, 2]]
    # one block, two pieces (rows): egs.1 eg 4, egs.2 egs 0..2
    assert list(MergedDir(m).blocks(archive=2)) == [Block(0, "output-0", 1.0, ((1, 4, 1), (2, 0, 3)))]
    assert [[(b.task, b.size, len(b.pieces)) for b in a] for a in MergedDir(m).archive_blocks()] == [
        [(0, 4, 1), (1, 4, 1)], [(0, 4, 2)], [(0, 4, 1), (1, 2, 1)]]
    assert len(list(MergedDir(m).blocks())) == 5
    alloc = pd.read_csv(m / "allocation.tsv", sep="\t", dtype={"archive": str, "task": str})
    train = alloc[alloc.part == "train"].set_index(["archive", "task"])
    assert train.loc[("total", "0"), ["examples", "frames", "blocks"]].tolist() == [12, 96, 3]
    assert train.loc[("total", "1"), ["examples", "frames", "blocks"]].tolist() == [6, 18, 2]
    assert train.loc[("2", "0"), ["examples", "frames", "blocks"]].tolist() == [4, 32, 1]
    assert train.loc[("total", "all"), "examples"] == 18
    assert (m / "valid.blocks.tsv").read_text() == "block\ttask\toutput\tweight\tsrc_archive\tfirst\tcount\n"
    # the whole dir is replaced atomically: no temp dirs left beside it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "m"]


def test_merged_show_is_what_kaldi_prints(lang0_twice, tmp_path):
    a, b, kaldi_text = lang0_twice
    merge_egs([a, b], tmp_path / "m", weights=[1.0, 0.5], block_size=4)
    # 56 egs, 2 archives (1 + 1), block 4: archive 1 gets round(14/2) = 7 blocks, alternating from the tie
    # (0, 1, 0, ...); archive 2 gets round(7/1) = 7, starting with task 1 (16/28 left vs 12/28).
    schedule = [(0, 0), (1, 0), (0, 4), (1, 4), (0, 8), (1, 8), (0, 12),
                (1, 12), (0, 16), (1, 16), (0, 20), (1, 20), (0, 24), (1, 24)]
    assert [(blk.task, *blk.pieces[0][1:]) for blk in MergedDir(tmp_path / "m").blocks()] == [
        (t, first, 4) for t, first in schedule]
    egs = _entries(kaldi_text)
    weights = [1.0, 0.5]
    expected = "".join(_as_merged(e, t, weights[t]) for t, first in schedule for e in egs[first:first + 4])
    ours = _show(tmp_path / "m")
    assert ours == expected
    assert "0.25 ]" in ours and " output " not in ours


def test_uniform_sampler_repeats_a_small_task(kaldi_fixtures, lang0_twice, tmp_path):
    a, _, _ = lang0_twice
    small = tmp_path / "small.ark"
    write_egs(f"ark:{small}", list(read_egs(f"ark:{kaldi_fixtures / 'egs' / 'lang0' / 'egs.1.ark'}"))[:8])
    import_kaldi(f"ark:{small}", tmp_path / "s")
    merge_egs([a, tmp_path / "s"], tmp_path / "m", block_size=4, sampler="uniform")
    # 36 egs, equal shares of 18: task 0 takes its first 18; task 1 (8 egs) goes round 2.25 times
    keys = {0: [], 1: []}
    m = MergedDir(tmp_path / "m")
    for blk in m.blocks():
        keys[blk.task] += [i for p in blk.pieces for i in range(p.first, p.first + p.count)]
    assert keys[0] == list(range(18)) and keys[1] == list(range(8)) * 2 + [0, 1]
    alloc = pd.read_csv(tmp_path / "m" / "allocation.tsv", sep="\t", dtype=str)
    tot = alloc[(alloc.part == "train") & (alloc.archive == "total")].set_index("task")["examples"]
    assert tot.to_dict() == {"0": "18", "1": "18", "all": "36"}
    assert sum(1 for _ in merged_nnet_examples(m)) == 36
    assert (tmp_path / "m" / "info" / "sampler").read_text().strip() == "uniform"


def test_diagnostic_parts_are_merged_into_one_archive(kaldi_fixtures, tmp_path):
    lang0 = kaldi_fixtures / "egs" / "lang0"
    all_egs = list(read_egs(f"ark:{lang0 / 'egs.1.ark'}"))
    dirs = []
    for name, valid in (("x", all_egs[:5]), ("y", all_egs[5:8])):
        kd = tmp_path / f"kaldi_{name}"
        kd.mkdir()
        shutil.copy(lang0 / "egs.1.ark", kd / "egs.1.ark")
        shutil.copy(lang0 / "cmvn_opts", kd / "cmvn_opts")
        write_egs(f"ark:{kd / 'valid_diagnostic.egs'}", valid)
        write_egs(f"ark:{kd / 'train_diagnostic.egs'}", all_egs[10:12])
        import_kaldi(str(kd), tmp_path / name)
        dirs.append(tmp_path / name)
    merge_egs(dirs, tmp_path / "m", weights=[0.5, 2.0], block_size=2, num_archives=3)
    m = MergedDir(tmp_path / "m")
    assert m.num_archives == 3 and sum(len(b.pieces) for b in m.blocks()) == 28
    # valid: 5 + 3 egs, one archive, round(4/1) = 4 blocks: [1,1] -> x, [0.6,1] -> y, [0.6,0.33] -> x,
    # [0.2,0.33] -> y (its tail), flush: x's last eg.
    assert [(b.task, p.first, p.count) for b in m.blocks("valid") for p in b.pieces] == [
        (0, 0, 2), (1, 0, 2), (0, 2, 2), (1, 2, 1), (0, 4, 1)]
    valid = list(merged_nnet_examples(m, "valid"))
    assert [k for k, _ in valid] == [k for k, _ in all_egs[0:2] + all_egs[5:7] + all_egs[2:4] + all_egs[7:8]
                                     + all_egs[4:5]]
    out = {io.name: io for io in valid[2][1].io}["output-1"].features
    src = {io.name: io for io in all_egs[5][1].io}["output"].features
    assert out.rows == [(d, [(c, float(np.float32(v) * np.float32(2.0))) for c, v in p]) for d, p in src.rows]
    assert [b.task for b in m.blocks("train_diagnostic")] == [0, 1]
    assert (tmp_path / "m" / "cmvn_opts").read_text().strip() == "--norm-means=false --norm-vars=false"


def test_one_reader_for_show_and_training(lang0_twice, tmp_path):
    """The training side (nnet.data) reads the schedule through MergedDir: the same blocks, loaded as tensors."""
    pytest.importorskip("torch")
    from babelflow.nnet.data import MergedSchedule

    a, b, _ = lang0_twice
    merge_egs([a, b], tmp_path / "m", weights=[1.0, 0.5], block_size=4, num_archives=2)
    m, s = MergedDir(tmp_path / "m"), MergedSchedule(tmp_path / "m")
    for part in ("train", "valid", "train_diagnostic"):
        assert s.blocks(part) == m.archive_blocks(part)
    assert [b for a in m.archive_blocks() for b in a] == list(m.blocks())
    assert s.names == m.names == ["a", "b"] and s.egs_dirs == [str(a), str(b)]
    blk = m.archive_blocks()[0][1]
    batch = s.load(blk)
    assert (batch.task, batch.weight, batch.x.shape) == (1, 0.5, (blk.size, 4 + 8 + 4, 40))
    shown = list(merged_nnet_examples(m, archive=1))[m.archive_blocks()[0][0].size:][:blk.size]
    for row, (_, eg) in zip(batch.x.numpy(), shown, strict=True):  # `egs show` and training see one example
        assert np.array_equal(row, {io.name: io for io in eg.io}["input"].features)


def test_schedule_files_are_checked(tmp_path):
    a = _fake_egs(tmp_path / "a", [5, 7])
    merge_egs([a], tmp_path / "m", block_size=4)
    m = tmp_path / "m"
    (m / "egs.1.blocks.tsv").write_text("block\ttask\toutput\tweight\tsrc_archive\tfirst\tcount\n"
                                        "1\t0\toutput-0\t1\t1\t0\t4\n0\t0\toutput-0\t1\t1\t4\t1\n")
    with pytest.raises(BabelflowError, match=r"egs\.1\.blocks\.tsv:3: block 0 after block 1"):
        list(MergedDir(m).blocks())
    (m / "valid.blocks.tsv").unlink()
    with pytest.raises(BabelflowError, match=r"valid\.blocks\.tsv: missing"):
        MergedDir(m).archive_blocks("valid")
    with pytest.raises(BabelflowError, match="unknown part 'test'"):
        MergedDir(m).archive_blocks("test")
    with pytest.raises(BabelflowError, match="no merged archive 3"):
        list(MergedDir(m).blocks(archive=3))
    with pytest.raises(BabelflowError, match="not a merged egs dir"):
        MergedDir(a)


# ----------------------------------------------------------------------------- checks
@pytest.mark.parametrize("field,value", [("feat_dim", "13"), ("left_context", "5"), ("right_context", "3"),
                                         ("left_context_initial", "0"), ("right_context_final", "0"),
                                         ("ivector_dim", "100"), ("cmvn_opts", "--norm-means=true")])
def test_mismatched_tasks_are_named(lang0_twice, tmp_path, field, value):
    a, b, _ = lang0_twice
    if field == "cmvn_opts":
        (b / "cmvn_opts").write_text(value + "\n")
    else:
        (b / "info" / field).write_text(value + "\n")
    with pytest.raises(BabelflowError) as e:
        merge_egs([a, b], tmp_path / "m")
    msg = str(e.value)
    assert f"task 1 'b' ({b})" in msg and field in msg and value in msg and f"task 0 'a' ({a})" in msg
    assert not (tmp_path / "m").exists()


def test_egs_with_other_contexts_are_refused(lang0_twice, tmp_path):
    a, _, _ = lang0_twice
    rng = np.random.default_rng(0)
    egs = [(f"u{i}-0", NnetExample([NnetIo.frames("input", -2, rng.standard_normal((14, 40))),
                                     NnetIo.frames("output", 0, SparseMatrix.from_rows([(18, [(1, 1.0)])] * 8))]))
           for i in range(3)]
    write_egs(f"ark:{tmp_path / 'lc2.ark'}", egs)
    import_kaldi(f"ark:{tmp_path / 'lc2.ark'}", tmp_path / "lc2")
    with pytest.raises(BabelflowError, match=r"task 1 'lc2' .*left_context is '2', but task 0 'a' .* has '4'"):
        merge_egs([a, tmp_path / "lc2"], tmp_path / "m")


def test_frames_per_eg_compared_among_frame_tasks_only(tmp_path):
    f8 = _fake_egs(tmp_path / "f8", [10])
    utt = _fake_egs(tmp_path / "utt", [10], kind="utterance", frames=50)
    info = merge_egs([utt, f8], tmp_path / "m")  # utterance task: frames_per_eg 0, fine
    assert info["frames_per_eg"] == "0"  # from task 0, as combine_egs.sh copies it
    f4 = _fake_egs(tmp_path / "f4", [10], frames=4, frames_per_eg=4)
    with pytest.raises(BabelflowError, match=r"task 2 'f4' .*frames_per_eg is '4', but task 1 'f8'"):
        merge_egs([utt, f8, f4], tmp_path / "m2")


@pytest.mark.parametrize("weights,match", [([1.0, 0.0], "task 1 'b'"),
                                           ([-1.0, 1.0], "task 0 'a'"), ([1.0, math.nan], "task 1 'b'"),
                                           ([math.inf, 1.0], "task 0 'a'")])
def test_bad_weights(tmp_path, weights, match):
    dirs = [_fake_egs(tmp_path / n, [4]) for n in ("a", "b")]
    with pytest.raises(BabelflowError, match=match) as e:
        merge_egs(dirs, tmp_path / "m", weights=weights)
    assert "weight" in str(e.value)
    assert not (tmp_path / "m").exists()


def test_bad_egs_dir_and_names(tmp_path):
    a = _fake_egs(tmp_path / "a", [4])
    with pytest.raises(BabelflowError, match=r"task 1 'nope' .*nope.*not an egs dir"):
        merge_egs([a, tmp_path / "nope"], tmp_path / "m")
    (a / "egs.1.index").unlink()
    with pytest.raises(BabelflowError, match=r"task 0 'a' .*egs.1.index missing"):
        merge_egs([a], tmp_path / "m")
    b = _fake_egs(tmp_path / "x" / "b", [4])
    with pytest.raises(BabelflowError, match="unique"):
        merge_egs([b, b], tmp_path / "m")
    merge_egs([b, b], tmp_path / "m", task_names=["b1", "b2"])
    assert pd.read_csv(tmp_path / "m" / "tasks.tsv", sep="\t")["name"].tolist() == ["b1", "b2"]


# ----------------------------------------------------------------------------- CLI
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "babelflow.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd)


def test_cli_merge_then_show(lang0_twice, tmp_path):
    a, b, _ = lang0_twice
    proc = _cli("merge", "--block-size", "4", "--task", f"en={a}:1.0", "--task", f"en2={b}:0.5", tmp_path / "m")
    assert proc.returncode == 0, proc.stderr
    assert pd.read_csv(tmp_path / "m" / "tasks.tsv", sep="\t")["name"].tolist() == ["en", "en2"]
    shown = _cli("egs", "show", tmp_path / "m")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == _show(tmp_path / "m") and shown.stdout.count("<Nnet3Eg>") == 56
    proc = _cli("merge", "--num-archives", "3", "--sampler", "temperature", "--temperature", "2", "--task", a,
                "--task", b, tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    assert MergedDir(tmp_path / "t").num_archives == 3
    bad = _cli("merge", "--task", f"a={a}:1.0", "--task", f"b={b}:nan", tmp_path / "bad")
    assert bad.returncode == 1 and "task 1 'b'" in bad.stderr and "Traceback" not in bad.stderr
    bad = _cli("merge", "--task", f"a={a}", "--task", f"b={b}:x", tmp_path / "bad")
    assert bad.returncode == 1 and "--task" in bad.stderr
