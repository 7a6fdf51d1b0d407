"""Benchmark of the training step of utterance tasks (whole utterances, pooled by an utterance head).

Egs: the demo's ``voice`` task (params.yaml's utterance task: every utterance of the 4 demo languages at
the default size, whole, float16, nj=2) written against one feature store, as ``bench/egs.py``'s section 5
writes the demo's four utterance tasks (corpus, data and features reused from bench/out/egs/utt, else
built the same way under ``--workdir``), merged by ``merge_egs`` into 64-example blocks (the demo's
``merge.block_size``). Model: the demo network (params.yaml's ``model:``: 6 batchnorm TDNN layers of 192
+ bottleneck 96; utterance head over the concatenated layers, attentive pooling, stats norm, hidden 192)
with one utterance head (``MultiTaskModel(cfg, 40, [TaskSpec("voice", "utterance", classes)])``). In one run:

1. padding: egs written with ``EgsOptions(sort_window=0)`` (a plain shuffle, as before) vs
   ``sort_window=512`` (the default: after the shuffle, examples sorted by length within windows of 512,
   ``egs.utterance.sort_window``). The share of valid frames in the merged blocks (sum of ``Batch.lengths``
   over rows x padded width, the width being ``x.shape[1]`` minus the model's context, as
   ``MergedSchedule.load`` returns the blocks) over one epoch, and seconds per training step (forward +
   backward + AdamW, ``step_loss`` as ``train`` runs it) over the same number of blocks of each (by default
   one epoch's: every training example once in both), and the ratio sorted / plain;
2. head projection: on the sorted egs, ``utterance_head.project: 0`` (pool the 1248 concatenated layer
   channels as they are) vs ``project: 256`` (the default: a per-frame affine + relu to 256 channels before
   pooling): seconds per step and the ratio;
3. precision: the default model on the sorted egs with its steps in fp32 vs under bf16 autocast
   (``train.precision``, ``nnet/precision.step_autocast``; ``auto`` takes bf16 on a CPU with AVX512-BF16 or
   AMX, which the header says this one has or not): seconds per step and the ratio;
4. diagnostics: the default model in test mode over the egs' ``valid`` + ``train_diagnostic`` blocks (not
   sorted by length: what ``evaluate`` and the batch-norm recompute run each epoch), one forward per block
   vs ``nnet/diagnostics.utterance_logp`` (trunk and pooling over sub-blocks of similar length, the
   classifier over the block): seconds per pass, the ratio, and the largest difference of the outputs;
5. twin blocks: the demo's four utterance tasks (lang 4, voice 8, gender 2, rate 3 classes: four heads of
   the default model) on the same blocks, as tasks over one feature store get them (``nnet/twins.py``):
   four minibatches (a step each, as ``train.shared_forward: false`` trains them) vs one minibatch with an
   output per task (one trunk pass, ``loss.minibatch_loss``, one step): seconds per block of the four
   tasks and the ratio (labels: voice's, folded into each task's classes; the step is what is timed).

Blocks are loaded before timing (the step alone is timed). Each model starts from ``torch.manual_seed(0)``
and takes ``--warmup`` untimed steps; within a run the compared models' steps alternate (AB BA ...), so
load on a noisy 2-core box hits both alike; each figure is the best of ``--repeats`` runs: read the ratios.
Run:  .venv/bin/python bench/heads.py [--workdir bench/out/heads] [--repeats 3] [--steps N] [--json PATH]
(one repeat: ~50 steps of the demo model on 64 whole utterances; ~2.5 min on the 2-core box under load 3)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from egs import LC, RC, prepare_demo, report  # noqa: E402  (bench/egs.py: the demo's utterance-task setup)

from babelflow.egs.make import EgsOptions, TaskSource, egs_job, finalize_egs_dir  # noqa: E402
from babelflow.egs.options import store_name  # noqa: E402
from babelflow.egs.store import write_store  # noqa: E402
from babelflow.merge import MergeOptions, MergeTask, merge_egs  # noqa: E402
from babelflow.nnet.data import Batch, MergedSchedule, epoch_plan  # noqa: E402
from babelflow.nnet.diagnostics import utterance_logp  # noqa: E402
from babelflow.nnet.loss import minibatch_loss, step_loss, valid_mask  # noqa: E402
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec  # noqa: E402
from babelflow.nnet.precision import cpu_has_native_bf16, step_autocast  # noqa: E402

TASK, BLOCK, WINDOWS, PROJECT = "voice", 64, (0, 512), (0, 256)
TWIN_TASKS = {"lang": 4, "voice": 8, "gender": 2, "rate": 3}  # the demo's utterance tasks and their classes
ROOT = Path(__file__).resolve().parent.parent
REUSE = ROOT / "bench" / "out" / "egs" / "utt"  # bench/egs.py section 5's corpus, data and features
CPU = torch.device("cpu")
DEMO = yaml.safe_load((ROOT / "params.yaml").read_text())["model"]


def demo_sets(workdir: Path) -> list[tuple[str, Path, Path]]:
    """The 4 demo languages' data and features: bench/egs.py's when complete, else built under ``workdir``."""
    langs = [p.name for p in (REUSE / "corpus").glob("*") if p.is_dir()] if (REUSE / "corpus").is_dir() else []
    done = langs and all((REUSE / "feats" / lang / "info" / "num_frames").is_file() for lang in langs)
    return prepare_demo(REUSE if done else workdir / "utt")


def utterance_egs(sets: list, workdir: Path) -> dict[int, MergedSchedule]:
    """The task's egs (one feature store) per sort window, each merged into BLOCK-example blocks."""
    store = workdir / "_store" / store_name([s for s, _, _ in sets])
    if not (store / "info").is_dir():
        shutil.rmtree(store, ignore_errors=True)
        write_store(sets, store, "float16", progress=False)
    out = {}
    for window in WINDOWS:
        egs, merged = workdir / f"egs_{TASK}_sort{window}", workdir / f"merged_{TASK}_sort{window}"
        shutil.rmtree(egs, ignore_errors=True)  # cheap (segments into the store): always as the code writes now
        opts = EgsOptions(left_context=LC, right_context=RC, sort_window=window)
        src = TaskSource(TASK, "utterance", sets, nj=2, labels=f"utt2{TASK}", store=store)
        for a in (1, 2):
            egs_job(src, a, egs, opts, progress=False)
        finalize_egs_dir(src, egs, opts)
        merge_egs([MergeTask(TASK, egs)], merged, MergeOptions(block_size=BLOCK))
        out[window] = MergedSchedule(merged)
    return out


def model_config(project: int) -> ModelConfig:
    d = {k: v for k, v in DEMO.items() if k != "config"}
    return ModelConfig.from_dict(d | {"utterance_head": d["utterance_head"] | {"project": project}})


def new_model(cfg: ModelConfig, classes: int) -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel(cfg, 40, [TaskSpec(TASK, "utterance", classes)]).train()


def step_seconds(runs: dict, steps: int, warmup: int) -> dict:
    """Per variant ``name: (cfg, classes, batches[, precision])``, a fresh model + AdamW; step k takes
    ``batches[k % len]`` (after ``warmup`` untimed steps) in ``precision`` (default fp32); the variants' steps
    alternate (AB BA ...). Returns name: s per step."""
    state = {}
    for name, (cfg, classes, batches, *prec) in runs.items():
        model = new_model(cfg, classes)
        state[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3), batches, [0.0], (prec or ["fp32"])[0])
    for k in range(warmup + steps):
        for name in (list(state) if k % 2 == 0 else list(state)[::-1]):
            model, optim, batches, acc, prec = state[name]
            b = batches[(k - warmup) % len(batches)]
            t0 = time.perf_counter()
            optim.zero_grad(set_to_none=True)
            with step_autocast(prec, CPU):
                loss, _ = step_loss(model, b)
            loss.backward()
            optim.step()
            if k >= warmup:
                acc[0] += time.perf_counter() - t0
    return {name: acc[0] / steps for name, (*_, acc, _) in state.items()}


def best(runs: dict, steps: int, warmup: int, repeats: int) -> dict:
    """Least seconds per step of each variant over ``repeats`` runs of :func:`step_seconds`, and every run."""
    got = [step_seconds(runs, steps, warmup) for _ in range(repeats)]
    return {n: min(g[n] for g in got) for n in runs} | {f"{n}_all": [g[n] for g in got] for n in runs}


def diagnostics_seconds(model: MultiTaskModel, batches: list[Batch], repeats: int) -> dict:
    """Least seconds of a test-mode pass over ``batches``: one forward per block vs ``utterance_logp``
    (alternating, AB BA ...), and the largest output difference."""
    ways = {"one_forward": lambda b: model(b.x, b.task, b.ivector, valid_mask(model, b)),
            "sub_blocks": lambda b: utterance_logp(model, b)}
    got: dict[str, list[float]] = {w: [] for w in ways}
    with torch.no_grad():
        diff = max(float((ways["one_forward"](b) - ways["sub_blocks"](b)).abs().max()) for b in batches)
        for r in range(repeats):
            for w in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                t0 = time.perf_counter()
                for b in batches:
                    ways[w](b)
                got[w].append(time.perf_counter() - t0)
    return {w: min(v) for w, v in got.items()} | {"max_abs_diff": diff}


def twin_seconds(cfg: ModelConfig, batches: list[Batch], steps: int, warmup: int, repeats: int) -> dict:
    """Least seconds per block of the four utterance tasks over ``repeats`` interleaved runs: a step per task
    (``separate``) vs one step of one minibatch with an output per task (``shared``)."""
    tasks = [TaskSpec(n, "utterance", c) for n, c in TWIN_TASKS.items()]
    blocks = [[dataclasses.replace(b, task=t, target=b.target % c.num_outputs) for t, c in enumerate(tasks)]
              for b in batches]
    got: dict[str, list[float]] = {"separate": [], "shared": []}
    for r in range(repeats):
        for way in (list(got) if r % 2 == 0 else list(got)[::-1]):
            torch.manual_seed(0)
            model = MultiTaskModel(cfg, 40, tasks).train()
            optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
            units = [[bs] for bs in blocks] if way == "shared" else [[[b] for b in bs] for bs in blocks]
            t0 = 0.0
            for k in range(warmup + steps):
                if k == warmup:
                    t0 = time.perf_counter()
                for mb in units[k % len(units)]:
                    optim.zero_grad(set_to_none=True)
                    loss, _ = minibatch_loss(model, mb)
                    loss.backward()
                    optim.step()
            got[way].append((time.perf_counter() - t0) / steps)
    return {w: min(v) for w, v in got.items()} | {f"{w}_all": v for w, v in got.items()}


def padding(batches: list[Batch], context: int) -> dict:
    """Valid output frames over padded ones (rows x padded width) in ``batches``, and input frames."""
    valid = sum(int(b.lengths.sum()) for b in batches)
    padded = sum(len(b.lengths) * (b.x.shape[1] - context) for b in batches)
    inputs = sum(b.x.shape[0] * b.x.shape[1] for b in batches)
    return {"valid": valid, "padded": padded, "share": valid / padded, "input_frames": inputs,
            "widths": [b.x.shape[1] - context for b in batches]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/heads"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, help="timed steps per run (default: one epoch's blocks, so that both "
                    "egs give every example once; fewer compare different examples)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps per model and run")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    R, W, res, table = args.repeats, args.workdir.resolve(), {}, []
    load0 = os.getloadavg()[0]
    W.mkdir(parents=True, exist_ok=True)
    sets = demo_sets(W)
    scheds = utterance_egs(sets, W)
    cfgs = {p: model_config(p) for p in PROJECT}
    default = model_config(DEMO["utterance_head"].get("project", 0))
    context = default.left_context + default.right_context
    classes = scheds[WINDOWS[-1]].egs[0].num_outputs
    batches = {w: [s.load(b) for b in epoch_plan(s.blocks("train"), 0, 0)] for w, s in scheds.items()}
    S = args.steps or max(len(b) for b in batches.values())
    params = {p: new_model(c, classes).num_parameters() for p, c in cfgs.items()}
    names = ", ".join(s for s, _, _ in sets)
    print(f"# utterance-task training benchmark: {TASK} over {len(sets)} languages ({names}), "
          f"{scheds[WINDOWS[0]].egs[0].info['num_egs']} egs, {classes} classes, {BLOCK}-example blocks "
          f"({len(batches[WINDOWS[0]])} per epoch); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{S} timed steps per run (+{args.warmup} warm-up), best of {R} interleaved runs; CPU with native bf16: "
          f"{'yes' if cpu_has_native_bf16() else 'no'}\n# model: demo TDNN "
          f"6x192 + bottleneck 96, batchnorm, context ({default.left_context}, {default.right_context}); "
          + ", ".join(f"project {p}: {n / 1e6:.3f}M parameters" for p, n in params.items()) + "\n")
    res["setup"] = {"task": TASK, "classes": classes, "block_size": BLOCK, "steps": S, "warmup": args.warmup,
                    "repeats": R, "parameters": params, "threads": torch.get_num_threads()}

    # 1. padding: plain shuffle vs sorted within windows, the default model
    pad = res["padding"] = {w: padding(b, context) for w, b in batches.items()}
    plain, srt = WINDOWS
    t = res["padding_step_s"] = best({w: (default, classes, batches[w]) for w in WINDOWS}, S, args.warmup, R)
    share, ratio = pad[srt]["share"] / pad[plain]["share"], t[srt] / t[plain]
    inputs = pad[srt]["input_frames"] / pad[plain]["input_frames"]
    print(f"1. padding {TASK} egs merged into {BLOCK}-example blocks, one epoch ({pad[plain]['valid']} valid frames):")
    for w in WINDOWS:
        p = pad[w]
        print(f"           sort_window {w:3d}: valid {p['share']:.3f} of {p['padded']} padded frames (widths "
              f"{min(p['widths'])}..{max(p['widths'])}), {p['input_frames']} input frames; {t[w]:.3f} s/step")
    print(f"           sorted / plain: valid share {share:.2f}x, input frames {inputs:.2f}x, s/step {ratio:.2f}x")
    table.append((f"{TASK} blocks of {BLOCK}, valid frame share: sorted (512) vs plain shuffle",
                  f"{pad[srt]['share']:.2f} vs {pad[plain]['share']:.2f}", f"{share:.2f}x", "~0.8 vs ~0.46"))
    table.append((f"train step, demo model, sorted (512) vs plain egs ({S} blocks)",
                  f"{t[srt]:.3f} vs {t[plain]:.3f} s", f"{ratio:.2f}x", "< 1"))

    # 2. the head's projection before pooling, sorted egs
    t = res["project_step_s"] = best({p: (c, classes, batches[srt]) for p, c in cfgs.items()}, S, args.warmup, R)
    p0, p1 = PROJECT
    ratio = t[p1] / t[p0]
    layers = sum(c.dim for c in default.trunk_layers)
    print(f"\n2. project utterance head on the sorted egs: project {p0} (pool the {layers} layer channels) "
          f"{t[p0]:.3f} s/step, project {p1} {t[p1]:.3f} s/step -> {ratio:.2f}x")
    table.append((f"train step, utterance_head.project {p1} vs {p0} ({layers} channels), sorted egs",
                  f"{t[p1]:.3f} vs {t[p0]:.3f} s", f"{ratio:.2f}x", "< 1"))

    # 3. the steps' precision, default model, sorted egs
    t = res["precision_step_s"] = best({p: (default, classes, batches[srt], p) for p in ("fp32", "bf16")}, S,
                                       args.warmup, R)
    ratio = t["bf16"] / t["fp32"]
    print(f"\n3. precision of the steps, default model, sorted egs: fp32 {t['fp32']:.3f} s/step, bf16 autocast "
          f"{t['bf16']:.3f} s/step -> {ratio:.2f}x (native bf16: {'yes' if cpu_has_native_bf16() else 'no'})")
    table.append(("train step, demo model, bf16 autocast vs fp32 (train.precision), sorted egs",
                  f"{t['bf16']:.3f} vs {t['fp32']:.3f} s", f"{ratio:.2f}x", "< 1 with native bf16"))

    # 4. diagnostics' test-mode passes over the unsorted valid + train_diagnostic blocks
    sched = scheds[srt]
    diag = [sched.load(b, part) for part in ("valid", "train_diagnostic") for bs in sched.blocks(part) for b in bs]
    model = new_model(default, classes).eval()
    for h in model.heads.values():  # output affines start at zero (Kaldi's): make the outputs depend on the input
        torch.nn.init.normal_(h.output.weight, std=0.1)
    t = res["diagnostics_s"] = diagnostics_seconds(model, diag, 2 * R + 1)
    share = padding(diag, context)["share"]
    ratio = t["sub_blocks"] / t["one_forward"]
    print(f"\n4. diagnostics, {len(diag)} valid + train_diagnostic blocks (valid frame share {share:.2f}), test mode: "
          f"one forward per block {t['one_forward']:.3f} s, sub-blocks by length {t['sub_blocks']:.3f} s -> "
          f"{ratio:.2f}x; outputs differ by at most {t['max_abs_diff']:.1e}")
    table.append((f"diagnostics pass, {TASK} valid + train_diagnostic blocks (valid share {share:.2f}): sub-blocks "
                  "by length vs one forward per block", f"{t['sub_blocks']:.3f} vs {t['one_forward']:.3f} s",
                  f"{ratio:.2f}x", "< 1, outputs within 1e-5"))

    # 5. twin blocks: the demo's four utterance tasks on the same blocks, one trunk pass vs four
    n = min(S, 12)
    t = res["twins_s"] = twin_seconds(default, batches[srt], n, args.warmup, R)
    ratio = t["shared"] / t["separate"]
    print(f"\n5. twin blocks, the demo's {len(TWIN_TASKS)} utterance tasks ({', '.join(TWIN_TASKS)}) on the same "
          f"{n} sorted blocks: a minibatch (and step) per task {t['separate']:.3f} s per block, one minibatch "
          f"with an output per task {t['shared']:.3f} s -> {ratio:.2f}x")
    table.append((f"the demo's {len(TWIN_TASKS)} utterance tasks on the same block: one minibatch with an output per "
                  "task (one trunk pass) vs a minibatch per task", f"{t['shared']:.3f} vs {t['separate']:.3f} s",
                  f"{ratio:.2f}x", "< 1"))

    res["loadavg"] = load = (load0, os.getloadavg()[0])
    busy = max(load) > os.cpu_count() + 0.5
    print(f"\n# 1-min load average at start / end: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores"
          + (": other processes competed, absolute s/step are high; interleaved ratios hold" if busy else ""))
    report(f"measure (best of {R}, interleaved; {S} steps per run)", table, res, args.json)


if __name__ == "__main__":
    main()
