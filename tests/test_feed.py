"""Training's feeds: the device-resident gather and the prefetching host feed give the batches
``MergedSchedule.load`` gives (so the same model for a seed), and host reads of the statistics
do not change the step log."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from babelflow.egs.make import EgsOptions, TaskSource, egs_job, finalize_egs_dir
from babelflow.egs.store import write_store
from babelflow.errors import BabelflowError
from babelflow.merge import MergeOptions, MergeTask, merge_egs
from babelflow.nnet.checkpoint import load_model
from babelflow.nnet.data import MergedSchedule
from babelflow.nnet.feed import HostFeed, Prefetcher, ResidentFeed, make_feed, resident_bytes
from babelflow.nnet.model import ModelConfig
from babelflow.nnet.options import TrainOptions
from babelflow.nnet.train import train

FRAME = EgsOptions(valid_fraction=0.2, left_context=3, right_context=3, dtype="float16")
UTT = EgsOptions(valid_fraction=0.25, num_train_subset_utts=4, chunking="random", min_chunk=20, max_chunk=40,
                 left_context=3, right_context=3)
SMALL = {"layers": [{"dim": 32, "splice": [-1, 0, 1]}, {"dim": 32, "splice": [-2, 2]}],
         "bottleneck": {"dim": 16}, "frame_head": {"hidden": [16]},
         "utterance_head": {"hidden": [16], "input": "layers", "pooling": "attentive", "attention_dim": 8},
         "norm": "batchnorm"}


@pytest.fixture(scope="module")
def merged(tiny_corpus, tiny_features, tmp_path_factory):
    """en (frames) + lang and gender (utterances of several lengths, one shared feature store),
    in blocks of 7 so that blocks span two archives."""
    from babelflow.egs.alignments import prepare_pdf_alignments

    root = tmp_path_factory.mktemp("feed")
    src = TaskSource("en", "frame", [("en", tiny_features / "data" / "en", tiny_features / "feats" / "en")], nj=2)
    prepare_pdf_alignments(str(tiny_corpus / "en" / "ali"), root / "en")
    for a in (1, 2):
        egs_job(src, a, root / "en", FRAME, progress=False)
    finalize_egs_dir(src, root / "en", FRAME)
    sets = [(s, tiny_features / "data" / s, tiny_features / "feats" / s) for s in ("de", "en")]
    store = root / "_store" / "de+en"
    write_store(sets, store, UTT.dtype, progress=False)
    for task, labels in (("lang", "utt2lang"), ("gender", "utt2gender")):
        src = TaskSource(task, "utterance", sets, nj=2, labels=labels, store=store)
        for a in (1, 2):
            egs_job(src, a, root / task, UTT, progress=False)
        finalize_egs_dir(src, root / task, UTT)
    merge_egs([MergeTask(t, root / t, w) for t, w in (("en", 1.0), ("lang", 0.5), ("gender", 1.0))],
              root / "merged", MergeOptions(block_size=7))
    return root / "merged"


def _equal(a, b) -> bool:
    return all((x is None and y is None) or (isinstance(x, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y))
               or x == y for x, y in zip(vars(a).values(), vars(b).values(), strict=True))


def test_resident_gather_equals_the_host_read(merged):
    s = MergedSchedule(merged)
    feed = ResidentFeed(s, "cpu")
    spans = widths = 0
    for part in ("train", "valid", "train_diagnostic"):
        for blk in (b for bs in s.blocks(part) for b in bs):
            want, got = s.load(blk, part), feed.load(blk, part)
            assert _equal(want, got), (part, blk)
            spans += len(blk.pieces) > 1
            widths += want.lengths is not None and len(set(want.lengths.tolist())) > 1
    assert spans and widths  # the cases that need care were there: two-piece blocks, padded utterances


def test_the_shared_store_goes_up_once(merged):
    s = MergedSchedule(merged)
    feed = ResidentFeed(s, "cpu")
    lang = feed._archives[1, "train", 1].feats
    assert lang is feed._archives[2, "valid", 1].feats  # lang and gender: one store tensor
    stores = {a.feats.data_ptr() for k, a in feed._archives.items() if k[0] > 0}
    assert len(stores) == 1
    per_archive = sum(s.merged.archive(t, p, n).feats.nbytes for t, p, n in feed._archives)
    assert resident_bytes(s, ("train", "valid", "train_diagnostic")) < per_archive


def test_prefetching_host_feed_keeps_order_and_raises_where_it_failed(merged):
    s = MergedSchedule(merged)
    blocks = [b for bs in s.blocks("train") for b in bs]
    plain = list(HostFeed(s, "cpu").iterate(blocks))
    ahead = list(HostFeed(s, "cpu", prefetch=3).iterate(blocks))
    assert [b for b, _ in ahead] == blocks and all(_equal(x, y) for (_, x), (_, y) in zip(plain, ahead))

    def load(i):
        if i == 4:
            raise ValueError("block 4 is bad")
        return i
    got = []
    with pytest.raises(ValueError, match="block 4 is bad"):
        for i, _ in Prefetcher(range(10), load, depth=2):
            got.append(i)
    assert got == [0, 1, 2, 3]


def test_only_the_trained_tasks_go_up(merged):
    s = MergedSchedule(merged)
    feed = ResidentFeed(s, "cpu", tasks={0})
    assert {k[0] for k in feed._archives} == {0}
    assert resident_bytes(s, ("train",), {0}) < resident_bytes(s, ("train",))
    blk = next(b for bs in s.blocks("train") for b in bs if b.task == 1)
    with pytest.raises(BabelflowError, match="not uploaded"):
        feed.load(blk)


def test_auto_loader_on_cpu_reads_the_host(merged):
    assert isinstance(make_feed("auto", MergedSchedule(merged), torch.device("cpu")), HostFeed)
    assert isinstance(make_feed("resident", MergedSchedule(merged), torch.device("cpu")), ResidentFeed)


@pytest.mark.slow
def test_resident_and_host_train_the_same_model(merged, tmp_path):
    """Same seed, same batches: bit-identical weights and step log, whichever feed (and however
    often the statistics are read back)."""
    cfg = ModelConfig.from_dict(SMALL)
    runs = {}
    for loader in ("host", "resident"):
        opts = TrainOptions(num_epochs=2, lr_initial=4e-3, lr_final=1e-3, checkpoint_every=3, loader=loader)
        runs[loader] = train(merged, tmp_path / loader, cfg, opts, progress=False)
    assert runs["host"] == runs["resident"]
    a, b = (load_model(tmp_path / x / "final.pt")[1]["state_dict"] for x in ("host", "resident"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    logs = [pd.read_csv(tmp_path / x / "train_log.tsv", sep="\t") for x in ("host", "resident")]
    assert logs[0].equals(logs[1]) and len(logs[0]) > 10
    assert set(logs[0]["task"]) == {"en", "lang", "gender"}
