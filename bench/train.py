"""Benchmark of babelflow's training step: the recipe-shaped TDNN on real merged egs.

Model: the recipe's TDNN at 512 wide (6 relu-renorm layers, splices {-2..2},{0},{-1,2},{-3,3},{-3,3},
{-7,2}, context 16/12, no bottleneck, one frame head, ~2.5M parameters). Egs: ``bench/egs.py``'s large
one-language egs (2000 utts, 8 frames/eg, float16; reused from bench/out/egs/large/egs_float16, else
built the same way under ``--workdir``), merged by ``merge_egs`` into 256-example blocks. In one run:

1. loader: training steps (forward + backward + clip + AdamW, ``step_loss`` as ``train`` runs it, in fp32 on a
   CPU as ``train.precision: fp32`` runs them; bf16 autocast on a GPU)
   fed by ``MergedSchedule.load`` over an ``epoch_plan`` vs the same model fed pre-generated random
   tensors of the same shapes (no loading): output frames/s and the ratio (target >= 0.9 on CPU);
2. vs Kaldi: the recipe TDNN (100 outputs) in frames/s against ``nnet3-train`` on this machine kind
   (2 cores: ~2000 frames/s on 8-frame egs; goal 1.5x), and with longer chunks (8..128 output frames
   per example, same context, ~2048 frames per minibatch) to show what recomputing context costs;
3. merge: ``merge_egs`` over 4 fake egs dirs totalling 1M examples (index files only, as
   tests/test_merge.py's ``_fake_egs``) and ``allocate`` alone, seconds per 1M examples (target < 5 s),
   and the merged dirs' size against the egs they point into (no example data copied);
4. memory: peak RSS (VmHWM) of a fresh child running the real ``train`` for ``--steps`` steps (its
   ``_steps`` truncated in the child; diagnostics and outputs included) vs the model + AdamW state
   (params x 4 B x 3) and vs the child's RSS right after ``import torch``;
5. device (a GPU when ``torch.cuda.is_available()``; ``--device cpu`` runs the same code here): at Kaldi's
   minibatch (256 x 8 frames) the feeds ``train`` can use — ``ResidentFeed`` (archives on the device, blocks
   gathered there), ``HostFeed`` with and without prefetching — vs random tensors already on the device,
   each timed over its steps with one synchronisation at the end (as ``train`` syncs once per 50 steps);
   frames/s for 256/1024/2048-example blocks (resident vs random) and for 8..128-frame chunks (random),
   and model FLOP utilisation: FLOPs of one step (forward + backward, ``torch.utils.flop_counter``) x
   steps/s over the GPU's dense bf16 peak (``--peak-tflops``, else a table of known GPUs).

Throughputs are the best of ``--repeats`` runs; within a run the compared feeds' steps alternate
(AB BA ...) so load on a noisy 2-core box hits all alike: read the ratios. RSS is the max over repeats.
Run:  .venv/bin/python bench/train.py [--workdir bench/out/train] [--repeats 3] [--steps 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from egs import ENV, LANG, egs_dir, prepare, report  # noqa: E402  (bench/egs.py: the same corpus/egs setup)

from babelflow.egs.format import INDEX_DTYPE  # noqa: E402
from babelflow.egs.make import EgsOptions, egs_job, finalize_egs_dir  # noqa: E402
from babelflow.merge import MergeOptions, MergeTask, allocate, merge_egs  # noqa: E402
from babelflow.nnet.data import Batch, MergedSchedule, epoch_plan  # noqa: E402
from babelflow.nnet.feed import HostFeed, ResidentFeed  # noqa: E402
from babelflow.nnet.loss import step_loss  # noqa: E402
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec  # noqa: E402
from babelflow.nnet.precision import legacy_precision, step_autocast  # noqa: E402

SPLICES = [[-2, -1, 0, 1, 2], [0], [-1, 2], [-3, 3], [-3, 3], [-7, 2]]
RECIPE = {"layers": [{"dim": 512, "splice": s} for s in SPLICES], "norm": "renorm"}
CFG = ModelConfig.from_dict(RECIPE)
LC, RC, FPE, BLOCK, FRAMES_PER_MB, KALDI_FPS = 16, 12, 8, 256, 2048, 2000
CHUNKS = (8, 32, 64, 128)
REUSE = Path(__file__).parent / "out" / "egs" / "large" / "egs_float16"
BLOCKS = (256, 1024, 2048)
# dense bf16; the first name found in the device's name counts (H100 PCIe before H100 SXM)
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0}

# The RSS child: RSS after `import torch`, then the real train() cut to N steps, then its own VmHWM
# (reset at exec, unlike ru_maxrss, so the parent's size does not leak in).
CHILD = """import json, sys
def kb(k): return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(k)) / 1024
import torch
after_torch = kb('VmRSS:')
import babelflow.nnet.train as T
from babelflow.nnet.model import ModelConfig
from babelflow.nnet.options import TrainOptions
steps = T._steps
T._steps = lambda *a: steps(*a)[:int(sys.argv[3])]
T.train(sys.argv[1], sys.argv[2], ModelConfig.from_dict(json.loads(sys.argv[4])),
        TrainOptions(num_epochs=1, checkpoint_every=0), progress=False)
print(json.dumps({'after_torch': after_torch, 'peak': kb('VmHWM:')}))
"""


def large_egs(workdir: Path) -> Path:
    """bench/egs.py's large float16 egs dir, reused when complete, else built in ``workdir``."""
    if (REUSE / "info" / "num_egs").is_file():
        return REUSE.resolve()
    src = prepare(workdir / "large", "large")
    out = egs_dir(workdir / "large", "egs_float16")
    opts = EgsOptions(frames_per_eg=FPE, left_context=LC, right_context=RC)
    if not (out / "info" / "num_egs").is_file():
        egs_job(src, 1, out, opts, progress=False)
        finalize_egs_dir(src, out, opts)
    return out.resolve()


def fake_egs(path: Path, sizes: list[int]) -> Path:
    """tests/test_merge.py's ``_fake_egs``: info/ and index files only."""
    (path / "info").mkdir(parents=True, exist_ok=True)
    for k, v in dict(feat_dim=40, left_context=LC, right_context=RC, left_context_initial=-1, right_context_final=-1,
                     frames_per_eg=FPE, num_archives=len(sizes), ivector_dim=0, kind="frame", num_egs=sum(sizes),
                     cmvn_opts="--norm-means=false --norm-vars=false", num_pdfs=100).items():
        (path / "info" / k).write_text(f"{v}\n")
    for j, n in enumerate(sizes, 1):
        rec = np.zeros(n, INDEX_DTYPE)
        rec["n"] = FPE
        rec.tofile(path / f"egs.{j}.index")
    return path


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def random_batches(num: int, chunk: int, num_outputs: int, device) -> list[Batch]:
    g, b = torch.Generator().manual_seed(0), FRAMES_PER_MB // chunk
    return [Batch(0, 1.0, torch.randn(b, LC + chunk + RC, 40, generator=g).to(device), None,
                  torch.randint(0, num_outputs, (b, chunk), generator=g).to(device),
                  torch.ones(b, chunk, device=device), None) for _ in range(num)]


def train_fps(feeds: dict, steps: int, device, warmup: int = 2) -> dict:
    """Per feed ``name: (get_batch, num_outputs)``, its own model + AdamW; the feeds' steps alternate
    (AB BA ...) so load on the box hits all alike. Returns name: (output frames/s, share of time in get_batch)."""
    runs = {}
    for name, (get, num_outputs) in feeds.items():
        torch.manual_seed(0)
        model = MultiTaskModel(CFG, 40, [TaskSpec("t", "frame", num_outputs)]).to(device).train()
        runs[name] = (get, model, torch.optim.AdamW(model.parameters(), lr=1e-3), [0.0, 0.0, 0.0])
    for k in range(warmup + steps):
        for name in (list(runs) if k % 2 == 0 else list(runs)[::-1]):
            get, model, optim, acc = runs[name]
            t0 = time.perf_counter()
            b = get(k)
            tl = time.perf_counter()
            optim.zero_grad(set_to_none=True)
            with step_autocast(legacy_precision(device), device):
                loss, *_ = step_loss(model, b)  # forward + loss, as train() runs it
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optim.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if k >= warmup:
                acc[0] += b.target.numel()
                acc[1] += time.perf_counter() - t0
                acc[2] += tl - t0
    return {name: (a[0] / a[1], a[2] / a[1]) for name, (*_, a) in runs.items()}


def best_fps(feeds: dict, steps: int, repeats: int, device) -> dict:
    """Best (max frames/s) of ``repeats`` runs of :func:`train_fps`, and every run."""
    runs = [train_fps(feeds, steps, device) for _ in range(repeats)]
    return {n: max(r[n] for r in runs) for n in feeds} | {f"{n}_all": [r[n] for r in runs] for n in feeds}


def fastest(fns: dict, repeats: int) -> dict:
    """Least seconds of each fn over ``repeats`` interleaved rounds (AB, BA, ...)."""
    runs: dict = {name: [] for name in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            runs[name].append(time.perf_counter() - t0)
    return {name: min(v) for name, v in runs.items()} | {f"{n}_all": v for n, v in runs.items()}


def macs_per_frame(chunk: int) -> float:
    """Trunk + head multiply-adds per output frame for a chunk, context frames recomputed."""
    t, macs = LC + chunk + RC, 0
    for i, layer in enumerate(CFG.layers):
        t -= layer.left + layer.right
        macs += t * layer.dim * (40 if i == 0 else CFG.layers[i - 1].dim) * len(layer.splice)
    return macs / chunk + CFG.layers[-1].dim * 100


def saved_mb(model: MultiTaskModel, batch: Batch) -> float:
    """MB that autograd keeps for backward in one step (the activations; each storage once)."""
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        step_loss(model, batch)
    return sum(saved.values()) / 2**20


def rss_child(merged: Path, out: Path, steps: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)  # else train() resumes from its checkpoint
    p = subprocess.run([sys.executable, "-c", CHILD, str(merged), str(out), str(steps), json.dumps(RECIPE)],
                       env=ENV, capture_output=True, text=True)
    if p.returncode:
        sys.exit(f"training child failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def loader_vs_random(schedule: MergedSchedule, num_outputs: int, steps: int, R: int, device) -> dict:
    plan = epoch_plan(schedule.blocks("train"), 0, 0)
    rand = random_batches(8, FPE, num_outputs, device)
    return best_fps({"loader": (lambda k: schedule.load(plan[k % len(plan)], "train", device), num_outputs),
                     "random": (lambda k: rand[k % len(rand)], num_outputs)}, steps, R, device)


def timed_steps(get, num_outputs: int, steps: int, device, warmup: int = 3) -> float:
    """Output frames/s of ``steps`` training steps fed by ``get(k)``, one synchronisation at the end."""
    torch.manual_seed(0)
    model = MultiTaskModel(CFG, 40, [TaskSpec("t", "frame", num_outputs)]).to(device).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-3)
    frames, t0 = 0, 0.0
    for k in range(warmup + steps):
        if k == warmup:
            sync(device)
            t0 = time.perf_counter()
        b = get(k)
        optim.zero_grad(set_to_none=True)
        with step_autocast(legacy_precision(device), device):
            loss, _ = step_loss(model, b)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        optim.step()
        frames += b.target.numel() if k >= warmup else 0
    sync(device)
    return frames / (time.perf_counter() - t0)


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_flops(batch: Batch, num_outputs: int, device) -> int:
    """FLOPs of one training step's forward + backward (matrix products; what MFU counts)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = MultiTaskModel(CFG, 40, [TaskSpec("t", "frame", num_outputs)]).to(device).train()
    with FlopCounterMode(display=False) as fc:
        with step_autocast(legacy_precision(device), device):
            loss, _ = step_loss(model, batch)
        loss.backward()
    return fc.get_total_flops()


def device_section(W: Path, egs: Path, dev, S: int, R: int, table: list, peak_tflops: float | None) -> dict:
    """Section 5: see the module docstring. Runs alternate (ABC.. CBA..), best of ``R``."""
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    peak = peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    steps = max(S, 200) if dev.type == "cuda" else S
    out: dict = {"name": name, "steps": steps}
    scheds = {}
    for bs in BLOCKS:
        merge_egs([MergeTask(LANG, egs)], W / f"merged_{bs}", MergeOptions(block_size=bs))
        scheds[bs] = MergedSchedule(W / f"merged_{bs}")
    s256 = scheds[BLOCK]
    pdfs = s256.egs[0].num_outputs
    resident = {bs: ResidentFeed(s, dev, ("train",)) for bs, s in scheds.items()}
    plans = {bs: epoch_plan(s.blocks("train"), 0, 0) for bs, s in scheds.items()}

    def rand(bs: int, chunk: int = FPE) -> list[Batch]:
        g, b = torch.Generator().manual_seed(0), bs * FPE // chunk
        return [Batch(0, 1.0, torch.randn(b, LC + chunk + RC, 40, generator=g).to(dev), None,
                      torch.randint(0, pdfs, (b, chunk), generator=g).to(dev), torch.ones(b, chunk, device=dev), None)
                for _ in range(4)]

    def stream(feed, plan):  # the feed's iterate(), as train() runs it (a prefetching feed reads ahead)
        it = feed.iterate(plan[k % len(plan)] for k in range(10**9))
        return lambda k: next(it)[1]

    def best(feeds: dict) -> dict:
        runs = {n: [] for n in feeds}
        for r in range(R):
            for n in (list(feeds) if r % 2 == 0 else list(feeds)[::-1]):
                runs[n].append(timed_steps(feeds[n](), pdfs, steps, dev))
        return {n: max(v) for n, v in runs.items()} | {f"{n}_all": v for n, v in runs.items()}

    r256, p256 = rand(BLOCK), plans[BLOCK]
    t = out["feeds_256x8"] = best({
        "random": lambda: (lambda k: r256[k % 4]),
        "resident": lambda: (lambda k: resident[BLOCK].load(p256[k % len(p256)])),
        "host_prefetch": lambda: stream(HostFeed(s256, dev, prefetch=2), p256),
        "host": lambda: (lambda k: s256.load(p256[k % len(p256)], "train", dev)),
    })
    print(f"\n5. device  {name}{' bf16' if dev.type == 'cuda' else ''}, {steps} steps per run, Kaldi's minibatch "
          f"({BLOCK} egs x {FPE} frames):")
    for n in ("resident", "host_prefetch", "host"):
        print(f"           {n:13s} {t[n]:9.0f} frames/s = {t[n] / t['random']:.3f}x random tensors on the device "
              f"({t['random']:.0f}) (target >= 0.9)")
        table.append((f"{name}: train step, {n} feed vs random tensors, {BLOCK}x{FPE}", f"{t[n]:.0f} fr/s",
                      f"{t[n] / t['random']:.2f}x", ">= 0.9x" if n == "resident" else "—"))
    out["blocks"] = {}
    for bs in BLOCKS[1:]:
        rb, pl = rand(bs), plans[bs]
        t = out["blocks"][bs] = best({"random": lambda rb=rb: (lambda k: rb[k % 4]),
                                      "resident": lambda bs=bs, pl=pl: (lambda k: resident[bs].load(pl[k % len(pl)]))})
        print(f"           {bs:4d} x {FPE} frames: resident {t['resident']:9.0f} frames/s, random {t['random']:9.0f}"
              f" -> {t['resident'] / t['random']:.3f}x")
        table.append((f"{name}: resident feed, {bs}x{FPE} blocks", f"{t['resident']:.0f} fr/s",
                      f"{t['resident'] / t['random']:.2f}x of random", "—"))
    out["chunks"] = {}
    for c in CHUNKS:
        rb = rand(BLOCK * 4, c)  # 1024 x 8 frames' worth per step
        fps = out["chunks"][c] = max(timed_steps(lambda k, rb=rb: rb[k % 4], pdfs, steps, dev) for _ in range(R))
        flops = step_flops(rb[0], pdfs, dev)
        mfu = fps / rb[0].target.numel() * flops / (peak * 1e12) if peak else None
        out["chunks"][f"{c}_mfu"] = mfu
        print(f"           random, {c:3d} frames/eg x {len(rb[0].target):4d}: {fps:10.0f} frames/s, "
              f"{flops / rb[0].target.numel() / 1e6:.1f} MFLOP per frame"
              + (f", MFU {100 * mfu:.1f}% of {peak:g} TFLOPS" if mfu is not None else ", MFU: no peak known"))
        table.append((f"{name}: random {c} fr/eg x {len(rb[0].target)}", f"{fps:.0f} fr/s",
                      f"MFU {100 * mfu:.1f}%" if mfu is not None else "—", "—"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/train"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per run (and in the RSS child)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--device", help="section 5 on this device (default: cuda when present, else skipped)")
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU")
    args = ap.parse_args()
    R, S, W, res, table = args.repeats, args.steps, args.workdir.resolve(), {}, []
    load0 = os.getloadavg()[0]
    egs = large_egs(W)
    merged = W / "merged"
    merge_egs([MergeTask(LANG, egs)], merged, MergeOptions(block_size=BLOCK))
    schedule = MergedSchedule(merged)
    pdfs = schedule.egs[0].num_outputs
    cpu = torch.device("cpu")
    train_fps({"warm-up": (lambda k, b=random_batches(1, FPE, pdfs, cpu)[0]: b, pdfs)}, 1, cpu)  # untimed first use
    n_pdfs, n_100 = (MultiTaskModel(CFG, 40, [TaskSpec("t", "frame", c)]).num_parameters() for c in (pdfs, 100))
    print(f"# training benchmark: {egs} ({schedule.egs[0].info['num_egs']} egs of {FPE} frames, {pdfs} pdfs), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; {S} timed steps per run, best of {R} "
          f"interleaved runs\n# model: recipe TDNN 6x512, context ({CFG.left_context}, {CFG.right_context}): "
          f"{n_pdfs / 1e6:.3f}M parameters with the {pdfs}-pdf head, {n_100 / 1e6:.3f}M with 100 outputs\n")

    # 1. the real loader vs in-memory random tensors, same model (egs' num_pdfs head)
    t = res["loader"] = loader_vs_random(schedule, pdfs, S, R, cpu)
    ratio = t["loader"][0] / t["random"][0]
    print(f"1. loader  MergedSchedule.load {t['loader'][0]:6.0f} frames/s (loading {100 * t['loader'][1]:.1f}% of the"
          f" time), random tensors {t['random'][0]:6.0f} frames/s -> {ratio:.3f}x (target >= 0.9)")
    table.append(("train step, real loader vs random tensors (CPU)", f"{t['loader'][0]:.0f} fr/s", f"{ratio:.2f}x",
                  ">= 0.9x"))

    # 2. vs Kaldi nnet3-train, and longer chunks (random tensors, 100 outputs, ~2048 frames per minibatch)
    batches = {c: random_batches(4, c, 100, cpu) for c in CHUNKS}
    t = best_fps({c: (lambda k, c=c: batches[c][k % 4], 100) for c in CHUNKS}, S, R, cpu)
    t = res["chunks"] = {c: t[c][0] for c in CHUNKS} | {f"{c}_all": [x[0] for x in t[f"{c}_all"]] for c in CHUNKS}
    real = res["loader"]["loader"][0]
    print(f"\n2. Kaldi   nnet3-train ~{KALDI_FPS} frames/s on 8-frame egs (2 cores);"
          f" goal 1.5x = {1.5 * KALDI_FPS:.0f}\n"
          f"           real loader, {pdfs} pdfs: {real:6.0f} frames/s = {real / KALDI_FPS:.2f}x Kaldi")
    table.append(("recipe TDNN, real egs (8 fr/eg) vs Kaldi nnet3-train (2000 fr/s)", f"{real:.0f} fr/s",
                  f"{real / KALDI_FPS:.2f}x", "goal 1.5x"))
    for c in CHUNKS:
        expect = macs_per_frame(CHUNKS[0]) / macs_per_frame(c)
        print(f"           random, {c:3d} frames/eg x {FRAMES_PER_MB // c:3d}: {t[c]:6.0f} frames/s ="
              f" {t[c] / KALDI_FPS:.2f}x "
              f"Kaldi, {t[c] / t[CHUNKS[0]]:.2f}x the 8-frame chunks (MACs per frame predict {expect:.2f}x)")
        table.append((f"recipe TDNN, random {c} fr/eg, vs Kaldi (2000 fr/s)", f"{t[c]:.0f} fr/s",
                      f"{t[c] / KALDI_FPS:.2f}x ({t[c] / t[CHUNKS[0]]:.2f}x of 8)", "goal 1.5x" if c == 8 else "—"))

    # 3. merge over 1M fake examples: 4 tasks x 4 archives
    sizes = [[62_500] * 4] * 4
    fakes = [fake_egs(W / "fake" / f"t{i}", s) for i, s in enumerate(sizes)]
    counts, n_ex = [sum(s) for s in sizes], sum(map(sum, sizes))

    t = fastest({"merge": lambda: merge_egs(fakes, W / "merged_1m", MergeOptions(block_size=BLOCK)),
                 "allocate": lambda: allocate(counts, 16, BLOCK)}, R)
    m, a = t["merge"] * 1e6 / n_ex, t["allocate"] * 1e6 / n_ex
    sz = {"merged_1m": du(W / "merged_1m"), "fake_egs": sum(du(f) for f in fakes), "merged": du(merged), "egs": du(egs)}
    res["merge"] = {"merge_s_per_1M": m, "allocate_s_per_1M": a, "bytes": sz, **t}
    print(f"\n3. merge   {n_ex} egs (4 tasks x 4 archives): merge_egs {m:.2f} s per 1M egs, allocate {a:.3f} s"
          f" (target < 5 s)\n           merged dir {sz['merged_1m'] / 1e6:.2f} MB ="
          f" {sz['merged_1m'] / n_ex:.1f} B/eg, vs the fake egs' index files {sz['fake_egs'] / 1e6:.1f} MB;"
          f" real: merged {sz['merged'] / 1e3:.0f} kB vs egs dir {sz['egs'] / 1e6:.1f} MB"
          f" ({sz['merged'] / sz['egs']:.4f}x: no example data copied)")
    table.append(("merge_egs, 4 tasks, s per 1M egs (allocate alone)", f"{m:.2f} s ({a:.3f} s)", "—", "< 5 s"))
    table.append(("merged dir size vs its egs dir (real)", f"{sz['merged'] / 1e3:.0f} kB",
                  f"{sz['merged'] / sz['egs']:.4f}x", "no copy"))

    # 4. peak RSS of a fresh training child
    runs = [rss_child(merged, W / "rss_train", S) for _ in range(R)]
    act_mb = saved_mb(MultiTaskModel(CFG, 40, [TaskSpec("t", "frame", pdfs)]).train(),
                      schedule.load(schedule.blocks("train")[0][0]))
    peak, torch_mb, state_mb = max(r["peak"] for r in runs), max(r["after_torch"] for r in runs), n_pdfs * 4 * 3 / 2**20
    res["rss_mb"] = {"peak": peak, "after_torch": torch_mb, "model_adamw": state_mb, "saved_activations": act_mb,
                     "runs": runs}
    print(f"\n4. memory  peak RSS of train() ({S} steps + diagnostics + outputs; max of {R}): {peak:.0f} MB;"
          f" after import torch {torch_mb:.0f} MB; model + AdamW {state_mb:.1f} MB -> growth over torch"
          f" {peak - torch_mb:.0f} MB = {(peak - torch_mb) / state_mb:.1f}x model + AdamW\n"
          f"           (activations autograd saves for one"
          f" {BLOCK}-eg step: {act_mb:.0f} MB; egs dir mapped:"
          f" {du(egs) / 2**20:.0f} MB on disk)")
    table.append(("peak RSS of training vs after import torch", f"{peak:.0f} / {torch_mb:.0f} MB",
                  f"+{peak - torch_mb:.0f} MB = {(peak - torch_mb) / state_mb:.1f}x model+AdamW ({state_mb:.0f} MB); "
                  f"activations {act_mb:.0f} MB", "—"))

    # 5. the device: feeds at Kaldi's minibatch, block sizes, chunk lengths, MFU
    dev = args.device or ("cuda" if torch.cuda.is_available() else None)
    if dev is None:
        print("\n5. GPU     no GPU present (torch.cuda.is_available() is False): skipped (--device cpu runs it here)")
    else:
        res["device"] = device_section(W, egs, torch.device(dev), S, R, table, args.peak_tflops)

    res["loadavg"] = load = (load0, os.getloadavg()[0])
    busy = max(load) > os.cpu_count() + 0.5  # this run alone keeps about cpu_count threads busy
    print(f"\n# 1-min load average at start / end: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores"
          + (": other processes competed, absolute frames/s are low; interleaved ratios hold" if busy else ""))
    report(f"measure (best of {R}, interleaved; {S} steps per run)", table, res, args.json)


if __name__ == "__main__":
    main()
