"""Multi-task training (Kaldi ``train_raw_dnn.py`` with multilingual egs) in PyTorch.

Each step trains on ``blocks_per_step`` minibatches; a minibatch is one task's block, as
Kaldi's merged egs are monolingual, or the blocks of twin utterance tasks over the same examples,
one output each (:mod:`.twins`). With ``batching: mixed`` a step instead holds one
block of every task (the second seed note's approach 1: one update, rows routed to their
heads). A block's loss is its per-frame cross-entropy times the task's supervision
weight (Kaldi's ScaleSupervisionWeight), so the weight scales that task's gradient;
reported objectives are unweighted per-frame values, as Kaldi's diagnostics print them.

Data parallelism (ranks, gradient all-reduce) is :mod:`.distributed`; the files written
(``final.pt``, ``checkpoint.pt``) are :mod:`.checkpoint`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from ..errors import BabelflowError
from ..io import write_text
from .checkpoint import checkpoint_hash, load_checkpoint, model_state_dict, save_checkpoint, save_model
from .data import MergedSchedule, epoch_plan, majority_labels
from .diagnostics import evaluate, recompute_batchnorm_stats
from .distributed import Dist
from .feed import make_feed
from .loss import minibatch_loss
from .model import ModelConfig, MultiTaskModel, TaskSpec, check_context, describe
from .natgrad import NaturalGradient
from .optim import MaxChange, components, kaldi_init
from .options import TrainOptions
from .precision import legacy_precision, resolve_precision, step_autocast
from .twins import minibatches, twin_groups

log = logging.getLogger("babelflow")

SYNC_EVERY = 50  # steps between host reads of the per-block statistics (the step log, the progress bar)


def _config_hash(model_cfg: ModelConfig, tasks: list[TaskSpec], opts: TrainOptions, schedule: MergedSchedule,
                 precision: str, device: torch.device, twins: list[tuple[int, ...]] = ()) -> str:
    """What a checkpoint must share with this run to be resumed: everything that shapes the
    result (not checkpoint_every/threads), and the data, so that a changed weight or egs
    seed starts over instead of resuming a finished run on other data. ``precision``: the
    resolved one (``auto`` means another thing on another machine), hashed only where it is not
    what training did before the option existed (bf16 on CUDA, fp32 on a CPU), so that those
    checkpoints still resume. ``twins``: the tasks trained on one trunk pass (:mod:`.twins`), likewise hashed
    only where there are any."""
    skip = {"checkpoint_every", "threads", "loader", "precision", "shared_forward"}
    opt = {k: v for k, v in asdict(opts).items() if k not in skip}
    if precision != legacy_precision(device):
        opt["precision"] = precision
    key = {"model": model_cfg.to_dict(), "tasks": [asdict(t) for t in tasks], "opt": opt,
           "data": _data_fingerprint(schedule)}
    if twins:  # what shared_forward changes, where it changes anything
        key["twins"] = [list(g) for g in twins]
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def _data_fingerprint(schedule: MergedSchedule) -> str:
    """The merged dir's schedule by content; the egs dirs behind it by name, size and mtime
    (their features can be GBs; a rewritten egs dir gets new mtimes)."""
    h = hashlib.sha1()
    for p in sorted(p for p in schedule.path.rglob("*") if p.is_file()):
        h.update(f"{p.relative_to(schedule.path)}\0".encode())
        h.update(p.read_bytes())
    for d in sorted(set(schedule.egs_dirs)):
        for p in sorted(Path(d).rglob("*")) if Path(d).is_dir() else ():
            if p.is_file():
                st = p.stat()
                h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def train(merged_dir: str | Path, out_dir: str | Path, model_cfg: ModelConfig, opts: TrainOptions,
          progress: bool = True, fresh_on_config_change: bool = False) -> dict:
    """Train (or resume) a multi-task model; writes final.pt, metrics.json, train_log.tsv, plots."""
    out = Path(out_dir)
    d = Dist()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(opts.seed)
    device = d.device
    schedule = MergedSchedule(merged_dir)
    check_context(model_cfg, schedule.left_context, schedule.right_context, str(merged_dir))
    specs = [TaskSpec(n, e.kind, e.num_outputs) for n, e in zip(schedule.names, schedule.egs)]
    model = MultiTaskModel(model_cfg, schedule.feat_dim, specs, schedule.ivector_dim).to(device)
    if opts.param_init == "kaldi":
        kaldi_init(model, opts.bias_stddev)
    trainable = _select_tasks(schedule, opts)
    if opts.init:
        _init_from(model, opts.init)
    if opts.freeze_trunk:
        for p in model.trunk.parameters():
            p.requires_grad = False
    _train_mode(model, opts)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = (torch.optim.AdamW(params, lr=opts.lr_initial, weight_decay=opts.weight_decay) if opts.optimizer == "adamw"
             else torch.optim.SGD(params, lr=opts.lr_initial, momentum=opts.momentum, weight_decay=opts.weight_decay))
    max_change = MaxChange(components(model, opts.max_change, opts.max_change_output), opts.max_param_change)
    natgrad = NaturalGradient(model) if opts.natural_gradient else None
    precision = resolve_precision(opts.precision, device)
    twins = trained_twins(schedule, opts, trainable)
    chash = _config_hash(model_cfg, specs, opts, schedule, precision, device, twins)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "frames": 0.0, "history": []}
    ckpt = out / "checkpoint.pt"
    stale = ckpt.exists() and fresh_on_config_change and checkpoint_hash(ckpt) != chash
    d.barrier()  # every rank has looked before rank 0 moves it (else they would disagree, and hang)
    if stale:
        log.warning("%s was written with another config or data: starting over (kept as checkpoint.pt.old)", ckpt)
        if d.rank == 0:
            os.replace(ckpt, ckpt.with_suffix(".pt.old"))
            if (out / "checkpoint_log.tsv").exists():
                os.replace(out / "checkpoint_log.tsv", out / "checkpoint_log.tsv.old")
    d.barrier()
    if ckpt.exists():
        state = load_checkpoint(ckpt, chash, model, optim)
        log.info("resuming from %s: epoch %d, step %d of that epoch", ckpt, state["epoch"] + 1, state["step_in_epoch"])
    if d.rank == 0:
        outputs = ", ".join(f"output-{i}={t.name} ({t.kind}, {t.num_outputs})" for i, t in enumerate(specs))
        log.info("%s; %d task(s): %s; device %s, %d process(es)", describe(model), len(specs), outputs, device, d.world)
    archives = [[b for b in blocks if b.task in trainable] for blocks in schedule.blocks("train")]
    if twins and d.rank == 0:
        log.info("one trunk pass for the blocks of %s", "; ".join(" + ".join(schedule.names[t] for t in g)
                                                                for g in twins))
    steps_per_epoch = len(_steps(epoch_plan(archives, 0, opts.seed, opts.shuffle_window), opts, d.world, twins))
    total_steps = max(1, steps_per_epoch * opts.num_epochs)
    majority = majority_labels(schedule)
    # The step log goes with the checkpoint (train_log.tsv is an output, which Snakemake deletes
    # before it retries a killed job); it becomes train_log.tsv when training ends.
    log_path = out / "checkpoint_log.tsv"
    if d.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _restart_log(log_path, state["global_step"])
    feed = make_feed(opts.loader, schedule, device, trainable)
    if d.rank == 0:
        log.info("loader: %s; training steps in %s", type(feed).__name__, precision)
    t_start = time.time()
    for epoch in range(state["epoch"], opts.num_epochs):
        steps = _steps(epoch_plan(archives, epoch, opts.seed, opts.shuffle_window), opts, d.world, twins)
        running: dict[str, float] = {}
        bar = tqdm(total=len(steps), initial=state["step_in_epoch"], desc=f"epoch {epoch + 1}/{opts.num_epochs}",
                   disable=not progress or d.rank != 0, unit="step", mininterval=2.0)
        rows: list[str] = []
        pending: list[tuple[str, str, float, float, torch.Tensor]] = []  # (task, row head, weight, lr, stats)
        first = state["step_in_epoch"]
        batches = feed.iterate(blk for step in steps[first:] for mb in step[d.rank::d.world] for blk in mb)
        for k in range(first, len(steps)):
            decay = math.log(opts.lr_final / opts.lr_initial)
            lr = opts.lr_initial * math.exp(state["global_step"] / total_steps * decay)
            for g in optim.param_groups:
                g["lr"] = lr
            optim.zero_grad(set_to_none=True)  # heads not in this step stay untouched
            if natgrad:
                natgrad.begin()
            for mb in steps[k][d.rank::d.world]:
                bs = [next(batches)[1] for _ in mb]
                with step_autocast(precision, device):
                    loss, stats = minibatch_loss(model, bs)
                (loss / len(steps[k])).backward()
                for b, st in zip(bs, stats):
                    name = schedule.names[b.task]
                    pending.append((name, f"{state['global_step']}\t{epoch + 1}\t{name}\toutput-{b.task}", b.weight,
                                    lr, st))
            if natgrad:  # each rank preconditions its own blocks, as each Kaldi job does
                natgrad.finish()
            d.sum_gradients(model)
            if opts.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
            max_change.before()
            optim.step()
            max_change.after()
            state["global_step"] += 1
            state["step_in_epoch"] = k + 1
            bar.update(1)
            checkpoint = opts.checkpoint_every and state["global_step"] % opts.checkpoint_every == 0
            if checkpoint or state["global_step"] % SYNC_EVERY == 0:
                _read_stats(pending, rows, running, state, bar)
            if checkpoint:
                _flush_log(log_path, rows, d)
                _checkpoint(ckpt, chash, model, optim, state, d)
        _read_stats(pending, rows, running, state, bar)
        bar.close()
        _flush_log(log_path, rows, d)
        state["epoch"], state["step_in_epoch"] = epoch + 1, 0
        if d.rank == 0:
            # the trained tasks only: another head's figures would be those of its initial weights
            recompute_batchnorm_stats(model, schedule, device, feed=feed, tasks=trainable,
                                      keep_trunk=opts.freeze_trunk, twins=twins)
            diag = {part: evaluate(model, schedule, part, device, majority, feed, trainable, twins)
                    for part in ("train_diagnostic", "valid")}
            state["history"].append({"epoch": epoch + 1, "diagnostics": {
                schedule.names[t]: {p: diag[p][t] for p in diag} for t in sorted(trainable)}})
            _log_diagnostics(schedule.names, diag)
            _train_mode(model, opts)
        _checkpoint(ckpt, chash, model, optim, state, d)
    d.barrier()
    if d.rank == 0:
        metrics = _write_outputs(out, model, schedule, state, time.time() - t_start, precision)
        return metrics
    return {}


def _train_mode(model: MultiTaskModel, opts: TrainOptions) -> None:
    """Train mode, except a frozen trunk, whose batch-norm statistics must not move either."""
    model.train()
    if opts.freeze_trunk:
        model.trunk.eval()


def trained_twins(schedule: MergedSchedule, opts: TrainOptions, trainable: set[int]) -> list[tuple[int, ...]]:
    """The twin groups (:mod:`.twins`) among the trained tasks, where training runs them as one minibatch."""
    if not opts.shared_forward or opts.batching != "schedule":
        return []
    groups = [tuple(t for t in g if t in trainable) for g in twin_groups(schedule)]
    return [g for g in groups if len(g) > 1]


def _select_tasks(schedule: MergedSchedule, opts: TrainOptions) -> set[int]:
    unknown = [t for t in opts.tasks if t not in schedule.names]
    if unknown:
        raise BabelflowError(f"train.tasks: unknown task(s) {', '.join(unknown)} (merged: {', '.join(schedule.names)})")
    return {i for i, n in enumerate(schedule.names) if not opts.tasks or n in opts.tasks}


def _steps(plan, opts: TrainOptions, world: int, twins: list[tuple[int, ...]]) -> list[list[list]]:
    """Group the epoch's blocks into optimizer steps (a multiple of the world size of minibatches each); a
    minibatch is one block, or twin blocks (:mod:`.twins`)."""
    if opts.batching == "mixed":  # one block of every task that still has blocks, per step
        queues = {}
        for b in plan:
            queues.setdefault(b.task, []).append(b)
        steps = []
        while any(queues.values()):
            steps.append([[q.pop(0)] for q in queues.values() if q])
        per = max(world, 1)
        return [s for s in steps if len(s) >= per]
    n = max(opts.blocks_per_step, world)
    if n % world:
        raise BabelflowError(f"train.blocks_per_step ({opts.blocks_per_step}) must be a multiple of the "
                             f"number of processes ({world})")
    mbs = minibatches(plan, twins)
    return [mbs[i:i + n] for i in range(0, len(mbs) - n + 1, n)]


def _init_from(model: MultiTaskModel, path: str) -> None:
    state = model_state_dict(path)
    own = model.state_dict()
    taken = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("trunk.") for k in taken):
        raise BabelflowError(f"{path}: its trunk does not match this model config")
    model.load_state_dict(taken, strict=False)
    log.info("initialised %d tensors from %s", len(taken), path)


def _checkpoint(path: Path, chash: str, model, optim, state: dict, d: Dist) -> None:
    if d.rank == 0:
        save_checkpoint(path, chash, model, optim, state)


def _restart_log(path: Path, global_step: int) -> None:
    """A new step log, or the resumed one without the rows after the checkpoint's step."""
    header = "step\tepoch\ttask\toutput\tobjective\taccuracy\tframes\tweight\tlr\n"
    lines = path.read_text().splitlines(keepends=True)[1:] if global_step and path.exists() else []
    write_text(path, header + "".join(ln for ln in lines if int(ln.split("\t", 1)[0]) < global_step))


def _read_stats(pending: list, rows: list[str], running: dict[str, float], state: dict, bar: tqdm) -> None:
    """The pending blocks' statistics read from the device at once (one sync), into step-log rows,
    the progress bar's running objectives and the frame count."""
    if not pending:
        return
    values = torch.stack([p[-1] for p in pending]).tolist()
    for (name, head, weight, lr, _), (obj, correct, frames) in zip(pending, values):
        per = obj / max(frames, 1e-8)
        running[name] = 0.9 * running.get(name, -per) + 0.1 * -per
        rows.append(f"{head}\t{per:.5f}\t{correct / max(frames, 1e-8):.4f}\t{frames:.1f}\t{weight:g}\t{lr:.3g}\n")
        state["frames"] += frames
    pending.clear()
    bar.set_postfix({n: f"{v:.2f}" for n, v in running.items()}, refresh=False)


def _flush_log(path: Path, rows: list[str], d: Dist) -> None:
    if d.rank == 0 and rows:
        with open(path, "a") as f:
            f.writelines(rows)
    rows.clear()


def _log_diagnostics(names: list[str], diag: dict) -> None:
    for part, res in diag.items():
        for t, r in res.items():
            log.info("compute_prob_%s: Overall log-likelihood for 'output-%d' (%s) is %.4f per frame, "
                     "over %.1f frames; "
                     "accuracy %.4f (majority baseline %.4f)", "valid" if part == "valid" else "train", t, names[t],
                     r["objective"], r["frames"], r["accuracy"], r["baseline_accuracy"])


def _write_outputs(out: Path, model, schedule: MergedSchedule, state: dict, seconds: float, precision: str) -> dict:
    save_model(out / "final.pt", model, schedule.egs[0].info, schedule.egs_dirs,
               {"history": json.dumps(state["history"])})
    last = state["history"][-1]["diagnostics"] if state["history"] else {}
    metrics = {name: {"valid_accuracy": r["valid"]["accuracy"], "valid_objective": r["valid"]["objective"],
                      "train_accuracy": r["train_diagnostic"]["accuracy"],
                      "train_objective": r["train_diagnostic"]["objective"],
                      "baseline_accuracy": r["valid"]["baseline_accuracy"]} for name, r in last.items()}
    write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    rows = ["epoch\ttask\tset\tobjective\taccuracy\tbaseline_accuracy\tframes\n"]
    for h in state["history"]:
        for name, parts in h["diagnostics"].items():
            for part, r in parts.items():
                rows.append(f"{h['epoch']}\t{name}\t{part}\t{r['objective']:.5f}\t{r['accuracy']:.5f}\t"
                            f"{r['baseline_accuracy']:.5f}\t{r['frames']:.1f}\n")
    write_text(out / "diagnostics.tsv", "".join(rows))
    from .plots import plot_curves, write_curve_tables

    write_text(out / "train_log.tsv", (out / "checkpoint_log.tsv").read_text())

    plot_curves(out / "train_log.tsv", out / "diagnostics.tsv", out / "curves.png")
    write_curve_tables(out / "diagnostics.tsv", out / "curves")
    write_text(out / "info" / "num_tasks", f"{len(model.tasks)}\n")
    write_text(out / "info" / "left_context", f"{model.left_context}\n")
    write_text(out / "info" / "right_context", f"{model.right_context}\n")
    write_text(out / "info" / "num_parameters", f"{model.num_parameters()}\n")
    write_text(out / "info" / "train_seconds", f"{seconds:.1f}\n")
    write_text(out / "info" / "precision", f"{precision}\n")  # the training steps' (train.precision resolved)
    log.info("wrote %s (%s)", out / "final.pt", ", ".join(f"{n}: valid acc {m['valid_accuracy']:.3f} vs baseline "
                                                           f"{m['baseline_accuracy']:.3f}" for n, m in metrics.items()))
    return metrics


