"""Twin blocks (nnet/twins.py): utterance tasks over one feature store draw the same examples, and
training runs the trunk once for their blocks: the loss and gradients are those of separate passes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from babelflow.egs.reader import EgsDir
from babelflow.nnet.data import MergedSchedule, epoch_plan
from babelflow.nnet.loss import minibatch_loss, step_loss
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec
from babelflow.nnet.options import TrainOptions
from babelflow.nnet.train import train, trained_twins
from babelflow.nnet.twins import minibatches, twin_groups
from tests.test_feed import SMALL, merged  # noqa: F401 (the fixture: en frames + lang, gender over one store)


def test_tasks_over_one_store_draw_the_same_examples(merged):  # noqa: F811
    s = MergedSchedule(merged)
    lang, gender = (EgsDir(s.egs_dirs[t]) for t in (1, 2))
    assert (lang.path / "valid_uttlist").read_text() == (gender.path / "valid_uttlist").read_text()
    for part in ("train", "valid", "train_diagnostic"):
        for a, b in zip(lang.archives(part), gender.archives(part), strict=True):
            assert [k.split("-", 1)[1] for k in a.seg_keys] == [k.split("-", 1)[1] for k in b.seg_keys]
            assert (a.seg_start == b.seg_start).all() and len(a.index) == len(b.index) > 0
            assert all((a.index[f] == b.index[f]).all() for f in ("seg", "t0", "n"))
    assert twin_groups(s) == [(1, 2)]


def test_minibatches_take_each_block_once_with_its_twins(merged):  # noqa: F811
    s = MergedSchedule(merged)
    plan = epoch_plan(s.blocks("train"), 0, seed=0)
    mbs = minibatches(plan, twin_groups(s))
    assert sorted(id(b) for mb in mbs for b in mb) == sorted(id(b) for b in plan)
    firsts = [plan.index(mb[0]) for mb in mbs]
    assert firsts == sorted(firsts)  # each minibatch at its first block's place
    pairs = [mb for mb in mbs if len(mb) > 1]
    assert pairs and len(pairs) == sum(b.task == 1 for b in plan)
    for mb in pairs:
        assert sorted(b.task for b in mb) == [1, 2] and mb[0].pieces == mb[1].pieces
        x = [s.load(b).x for b in mb]
        assert torch.equal(x[0], x[1])
    assert all(len(mb) == 1 for mb in mbs if mb[0].task == 0)
    assert minibatches(plan, []) == [[b] for b in plan]


def test_one_trunk_pass_gives_the_separate_passes_loss_and_gradients(merged):  # noqa: F811
    s = MergedSchedule(merged)
    specs = [TaskSpec(n, e.kind, e.num_outputs) for n, e in zip(s.names, s.egs)]
    torch.manual_seed(0)
    model = MultiTaskModel(ModelConfig.from_dict(SMALL), s.feat_dim, specs)
    for head in model.heads.values():  # Kaldi's zero output layers would make every gradient below alike
        torch.nn.init.normal_(head.output.weight)
    model.train()
    mb = next(mb for mb in minibatches(s.blocks("train")[0], twin_groups(s)) if len(mb) > 1)
    batches = [s.load(b) for b in mb]
    loss, stats = minibatch_loss(model, batches)
    loss.backward()
    shared = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    separate = [step_loss(model, b) for b in batches]
    sum(x for x, _ in separate).backward()
    assert loss.item() == pytest.approx(sum(x.item() for x, _ in separate), rel=1e-6)
    assert all(torch.allclose(a, b) for a, (_, b) in zip(stats, separate))
    assert shared.keys() == {k for k, p in model.named_parameters() if p.grad is not None}
    for k, g in shared.items():  # float32 sums in another order: close to the tensor's scale
        want = model.get_parameter(k).grad
        torch.testing.assert_close(g, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    assert any(k.startswith("trunk.") for k in shared)


@pytest.mark.slow
def test_shared_forward_trains_fewer_steps_on_the_same_blocks(merged, tmp_path):  # noqa: F811
    cfg = ModelConfig.from_dict(SMALL)
    logs = {}
    for shared in (True, False):
        opts = TrainOptions(num_epochs=1, lr_initial=4e-3, lr_final=1e-3, shared_forward=shared)
        train(merged, tmp_path / str(shared), cfg, opts, progress=False)
        logs[shared] = pd.read_csv(tmp_path / str(shared) / "train_log.tsv", sep="\t")
    on, off = logs[True], logs[False]
    assert on["task"].value_counts().to_dict() == off["task"].value_counts().to_dict()  # every block once
    twins = on[on["task"].isin(["lang", "gender"])].groupby("step")["task"].apply(sorted)
    assert (twins.map(tuple) == ("gender", "lang")).all()  # lang and gender blocks share their steps
    assert on["step"].nunique() == off["step"].nunique() - len(twins)


def test_diagnostics_of_twins_from_one_trunk_pass_are_the_same(merged):  # noqa: F811
    from babelflow.nnet.diagnostics import evaluate, recompute_batchnorm_stats

    s = MergedSchedule(merged)
    specs = [TaskSpec(n, e.kind, e.num_outputs) for n, e in zip(s.names, s.egs)]
    torch.manual_seed(1)
    model = MultiTaskModel(ModelConfig.from_dict(SMALL), s.feat_dim, specs)
    for head in model.heads.values():
        torch.nn.init.normal_(head.output.weight)
    got = {}
    for name, twins in (("separate", []), ("shared", twin_groups(s))):
        recompute_batchnorm_stats(model, s, "cpu", twins=twins)
        stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
        got[name] = stats, {p: evaluate(model, s, p, "cpu", twins=twins) for p in ("valid", "train_diagnostic")}
    (a_stats, a), (b_stats, b) = got["separate"], got["shared"]
    assert any(k.startswith("heads.output-1") for k in a_stats)  # the utterance heads' statistics are there
    for k in a_stats:
        torch.testing.assert_close(a_stats[k], b_stats[k], rtol=1e-5, atol=1e-6)
    for p in a:
        for t in a[p]:
            assert b[p][t] == pytest.approx(a[p][t], rel=1e-5), (p, t)


def test_twins_among_the_trained_tasks_only(merged):  # noqa: F811
    s = MergedSchedule(merged)
    assert trained_twins(s, TrainOptions(), {0, 1, 2}) == [(1, 2)]
    assert trained_twins(s, TrainOptions(), {0, 1}) == []  # gender not trained: lang alone
    assert trained_twins(s, TrainOptions(shared_forward=False), {0, 1, 2}) == []
    assert trained_twins(s, TrainOptions(batching="mixed"), {0, 1, 2}) == []


def test_repeated_pieces_pair_in_order():
    """A resampling sampler may give a task the same pieces twice in an epoch: the n-th pairs with the n-th."""
    from babelflow.egs.merged import Piece
    from babelflow.nnet.data import Block

    def blk(task, first):
        return Block(task, f"output-{task}", 1.0, (Piece(1, first, 4),))

    plan = [blk(1, 0), blk(0, 0), blk(2, 0), blk(1, 0), blk(2, 4), blk(2, 0), blk(1, 4)]
    mbs = minibatches(plan, [(1, 2)])
    assert [[(b.task, b.pieces[0].first) for b in mb] for mb in mbs] == [
        [(1, 0), (2, 0)], [(0, 0)], [(1, 0), (2, 0)], [(2, 4), (1, 4)]]
    assert [id(b) for b in mbs[0]] == [id(plan[0]), id(plan[2])] and mbs[2][1] is plan[5]
