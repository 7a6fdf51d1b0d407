"""Benchmark of babelflow's inference: ``compute`` batched (many utterances per forward pass) vs the
old per-utterance path, and ``compute_priors`` batched by frames vs its old 256-eg batches.

Models (random init: throughput does not depend on training), saved as task model dirs as ``split_model``
leaves them: the **demo** model (params.yaml ``model:``: 6 x 192 TDNN + bottleneck 96, batchnorm, ~0.7M
parameters with the egs' pdfs) and the **recipe** model (bench/train.py's ``RECIPE``: 6 x 512 relu-renorm,
context 16/12, ~2.5M). Data: bench/egs.py's large one-language corpus (fbank 40, ~160 frames per
utterance), its first ``--utts`` (1000) utterances for compute, and its 8-frame egs for priors (reused from
bench/out/egs/large when present, else built under ``--workdir``). In one run:

1. compute: ``infer.compute(model_dir, scp, ark)`` with ``--batch-frames`` (default) vs ``--batch-frames 0``
   (one forward per utterance: the path before batching), wall and CPU time (this process, all threads),
   ratio batched/old (< 1 is faster); the outputs are compared (max |diff|). Plus a ``--batch-frames``
   sweep on the demo model (what the default was chosen from).
2. vs Kaldi: ``nnet3-compute`` on the same model exported raw, same features, when ``KALDI_ROOT`` points at
   a build (``$KALDI_ROOT/src/nnet3bin/nnet3-compute``); otherwise said so, with the issue's figure (old
   path = 3.1x Kaldi's CPU time on the demo model) for orientation only.
3. priors: ``compute_priors`` over all training egs, default ``--batch-frames`` vs 256-eg batches (the old
   fixed batch).
4. GPU: the same on CUDA (``--device cuda``) when ``torch.cuda.is_available()``, otherwise said so.

Timings: best (minimum) of ``--repeats`` interleaved runs (AB, BA, ...), so drift on a noisy box hits all.
Run:  .venv/bin/python bench/compute.py [--workdir bench/out/compute] [--utts 1000] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import kaldiio
import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from egs import LANG, report  # noqa: E402  (bench/egs.py: corpus setup, report table)
from train import RECIPE, large_egs  # noqa: E402  (bench/train.py: the recipe TDNN, the large egs)

from babelflow.egs.reader import EgsDir  # noqa: E402
from babelflow.nnet.batching import BATCH_FRAMES  # noqa: E402
from babelflow.nnet.checkpoint import load_task_model, save_task_model  # noqa: E402
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec  # noqa: E402
from babelflow.nnet.taskmodel import compute_priors  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SWEEP = (2048, 4096, 8192, 16384, 32768)
KALDI_ISSUE = 3.1  # the issue: old compute = 3.1x nnet3-compute's CPU time, demo model, 1000 x ~155 frames


def demo_config() -> dict:
    return {k: v for k, v in yaml.safe_load((REPO / "params.yaml").read_text())["model"].items() if k != "config"}


def make_model_dir(out: Path, egs: EgsDir, config: dict) -> Path:
    """A frame-task model dir as ``split_model`` + priors would leave it, without training."""
    torch.manual_seed(0)
    pdfs, dim = egs.num_outputs, int(egs.info["feat_dim"])
    model = MultiTaskModel(ModelConfig.from_dict(config), dim, [TaskSpec(LANG, "frame", pdfs)], head_names=["output"])
    torch.nn.init.normal_(model.heads["output"].output.weight, std=0.1)  # not all-zero logits
    meta = {"task": LANG, "kind": "frame", "num_outputs": pdfs, "left_context": model.left_context,
            "right_context": model.right_context, "input_dim": dim, "ivector_dim": 0,
            "feat_type": egs.info.get("feat_type", "fbank"), "cmvn_opts": "--norm-means=false --norm-vars=false",
            "egs_dir": str(egs.path), "labels": [], "feature_conf": "",
            "priors": torch.full((pdfs,), 1.0 / pdfs, dtype=torch.float32), "prior_method": "uniform"}
    save_task_model(out, model, meta)
    return out


def timed2(fns: dict, repeats: int) -> dict:
    """Best wall and CPU (process, all threads) seconds of each fn over interleaved rounds."""
    best = {k: [float("inf"), float("inf")] for k in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            w, c = time.perf_counter(), time.process_time()
            fns[name]()
            best[name] = [min(best[name][0], time.perf_counter() - w), min(best[name][1], time.process_time() - c)]
    return {k: {"wall": v[0], "cpu": v[1]} for k, v in best.items()}


def kaldi_compute(raw: Path, scp: Path, out: Path) -> dict:
    """nnet3-compute's wall and CPU (children) seconds on the same features."""
    exe = Path(os.environ["KALDI_ROOT"]) / "src" / "nnet3bin" / "nnet3-compute"
    c0, w = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run([str(exe), "--use-gpu=no", str(raw), f"scp:{scp}", f"ark:{out}"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall": time.perf_counter() - w, "cpu": c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime}


def kaldi_build() -> Path | None:
    root = os.environ.get("KALDI_ROOT")
    exe = Path(root) / "src" / "nnet3bin" / "nnet3-compute" if root else None
    return exe if exe is not None and exe.is_file() else None


def max_diff(a: Path, b: Path) -> float:
    other = dict(kaldiio.load_ark(str(b)))
    return max(float(np.abs(m - other[k]).max()) for k, m in kaldiio.load_ark(str(a)))


def bench_compute(name: str, md: Path, scp: Path, frames: int, R: int, tmp: Path, device: str = "cpu") -> dict:
    from babelflow.nnet.infer import compute

    outs = {k: tmp / f"{name}.{device}.{k}.ark" for k in ("batched", "old")}
    t = timed2({"batched": lambda: compute(md, f"scp:{scp}", f"ark:{outs['batched']}", use_priors=False,
                                          device=device),
                "old": lambda: compute(md, f"scp:{scp}", f"ark:{outs['old']}", use_priors=False, batch_frames=0,
                                       device=device)}, R)
    r = {"times_s": t, "ratio_wall": t["batched"]["wall"] / t["old"]["wall"],
         "ratio_cpu": t["batched"]["cpu"] / t["old"]["cpu"], "max_abs_diff": max_diff(outs["batched"], outs["old"]),
         "fps_batched": frames / t["batched"]["wall"], "fps_old": frames / t["old"]["wall"]}
    print(f"   {name:6s} {device}: batched {t['batched']['wall']:.2f} s wall / {t['batched']['cpu']:.2f} s CPU"
          f" ({r['fps_batched'] / 1e3:.0f}k fr/s), old {t['old']['wall']:.2f} s / {t['old']['cpu']:.2f} s"
          f" ({r['fps_old'] / 1e3:.0f}k fr/s): batched/old wall {r['ratio_wall']:.3f}x, CPU {r['ratio_cpu']:.3f}x;"
          f" max |diff| {r['max_abs_diff']:.1e}")
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/compute"))
    ap.add_argument("--utts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    R, W, res, table = args.repeats, args.workdir.resolve(), {}, []
    W.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    egs = EgsDir(large_egs(W))
    scp = W / f"feats_{args.utts}.scp"  # <root>/large/{feats,egs_float16}, as bench/egs.py lays out
    scp.write_text("".join((egs.path.parent / "feats" / "feats.scp").read_text().splitlines(True)[:args.utts]))
    frames = sum(m.shape[0] for _, m in kaldiio.load_scp_sequential(str(scp)))
    dirs = {"demo": make_model_dir(W / "model_demo", egs, demo_config()),
            "recipe": make_model_dir(W / "model_recipe", egs, RECIPE)}
    params = {k: load_task_model(d)[0].num_parameters() for k, d in dirs.items()}
    print(f"# compute benchmark: {args.utts} utts, {frames} frames ({frames / args.utts:.0f} per utt),"
          f" {egs.num_outputs} pdfs; models: demo {params['demo'] / 1e6:.2f}M, recipe"
          f" {params['recipe'] / 1e6:.2f}M parameters;"
          f" torch {torch.__version__}, {torch.get_num_threads()} threads; --batch-frames {BATCH_FRAMES};"
          f" best of {R} interleaved runs\n\n1. compute (scp -> ark, no priors), batched vs one utterance per pass")
    with tempfile.TemporaryDirectory(dir=W) as tmp:
        for name, md in dirs.items():
            r = res[f"compute_{name}"] = bench_compute(name, md, scp, frames, R, Path(tmp))
            table.append((f"compute, {name} model ({params[name] / 1e6:.1f}M), batched / old, CPU (wall)",
                          f"{r['fps_batched'] / 1e3:.0f}k fr/s", f"{r['ratio_cpu']:.2f}x ({r['ratio_wall']:.2f}x)",
                          "< 1"))
        from babelflow.nnet.infer import compute

        sweep = timed2({bf: (lambda bf=bf: compute(dirs["demo"], f"scp:{scp}", f"ark:{Path(tmp) / 'sweep.ark'}",
                                                   use_priors=False, batch_frames=bf, device="cpu"))
                        for bf in SWEEP}, max(1, R - 1))
        res["sweep_demo"] = sweep
        print("   --batch-frames sweep (demo, CPU s): " + ", ".join(f"{bf}: {v['cpu']:.2f}" for bf, v in sweep.items()))

        # 2. Kaldi
        exe = kaldi_build()
        if exe is None:
            print(f"\n2. Kaldi   KALDI_ROOT={os.environ.get('KALDI_ROOT', '(unset)')} has no"
                  f" src/nnet3bin/nnet3-compute: not compared. The issue measured the old path at"
                  f" {KALDI_ISSUE}x nnet3-compute's CPU time (demo"
                  f" model, 1000 x ~155 frames); at batched/old CPU {res['compute_demo']['ratio_cpu']:.2f}x that would"
                  f" be ~{KALDI_ISSUE * res['compute_demo']['ratio_cpu']:.2f}x (an estimate across machines, not a"
                  f" measurement)")
            res["kaldi"] = None
        else:
            from babelflow.kaldi.nnet3 import write_nnet
            from babelflow.nnet.export import task_model_to_nnet

            res["kaldi"] = {}
            for name, md in dirs.items():
                raw = Path(tmp) / f"{name}.raw"
                write_nnet(raw, task_model_to_nnet(*load_task_model(md)), True)
                k = min((kaldi_compute(raw, scp, Path(tmp) / "kaldi.ark") for _ in range(R)), key=lambda x: x["cpu"])
                b = res[f"compute_{name}"]["times_s"]["batched"]
                res["kaldi"][name] = {"kaldi": k, "ratio_cpu": b["cpu"] / k["cpu"], "ratio_wall": b["wall"] / k["wall"]}
                print(f"\n2. Kaldi   {name}: nnet3-compute {k['wall']:.2f} s wall / {k['cpu']:.2f} s CPU; babelflow"
                      f" batched / Kaldi: CPU {b['cpu'] / k['cpu']:.2f}x, wall {b['wall'] / k['wall']:.2f}x")
                table.append((f"compute batched vs Kaldi nnet3-compute, {name}, CPU (wall)", f"{k['cpu']:.2f} s Kaldi",
                              f"{b['cpu'] / k['cpu']:.2f}x ({b['wall'] / k['wall']:.2f}x)", "<= 1"))

        # 3. priors
        num_egs = sum(len(a) for a in egs.archives("train"))
        old_bf = 256 * (16 + 12 + int(egs.info["frames_per_eg"]))  # 256 egs of the recipe model's input width
        got: dict = {}
        t = timed2({"batched": lambda: got.update(compute_priors(dirs["recipe"], egs.path, num_egs=num_egs,
                                                                device="cpu")),
                    "old": lambda: compute_priors(dirs["recipe"], egs.path, num_egs=num_egs, batch_frames=old_bf,
                                                  device="cpu")}, R)
        res["priors_recipe"] = {"num_egs": num_egs, "frames": got["frames"], "times_s": t,
                                "ratio_cpu": t["batched"]["cpu"] / t["old"]["cpu"],
                                "ratio_wall": t["batched"]["wall"] / t["old"]["wall"]}
        p = res["priors_recipe"]
        print(f"\n3. priors  recipe model, {num_egs} egs ({got['frames']} frames): --batch-frames {BATCH_FRAMES}"
              f" {t['batched']['wall']:.2f} s wall / {t['batched']['cpu']:.2f} s CPU vs 256-eg batches"
              f" {t['old']['wall']:.2f} s / {t['old']['cpu']:.2f} s: batched/old CPU {p['ratio_cpu']:.2f}x,"
              f" wall {p['ratio_wall']:.2f}x")
        table.append(("compute_priors, recipe model, default vs 256-eg batches, CPU (wall)",
                      f"{got['frames'] / t['batched']['wall'] / 1e3:.0f}k fr/s",
                      f"{p['ratio_cpu']:.2f}x ({p['ratio_wall']:.2f}x)", "<= 1"))

        # 4. GPU
        if torch.cuda.is_available():
            print(f"\n4. GPU     {torch.cuda.get_device_name()}: compute batched vs one utterance per pass on CUDA")
            for name, md in dirs.items():
                r = res[f"gpu_compute_{name}"] = bench_compute(name, md, scp, frames, R, Path(tmp), "cuda")
                cpu = res[f"compute_{name}"]["times_s"]["batched"]["wall"]
                print(f"          {name}: CUDA batched wall = {r['times_s']['batched']['wall'] / cpu:.2f}x CPU batched")
                table.append((f"compute, {name}, CUDA batched / old (wall)", f"{r['fps_batched'] / 1e3:.0f}k fr/s",
                              f"{r['ratio_wall']:.2f}x", "< 1"))
        else:
            print("\n4. GPU     no CUDA device (torch.cuda.is_available() is False): GPU section skipped")
            res["gpu"] = None
    res["loadavg"] = (load0, os.getloadavg()[0])
    print(f"\n# 1-min load average at start / end: {res['loadavg'][0]:.1f} / {res['loadavg'][1]:.1f} on"
          f" {os.cpu_count()} cores (other load slows all variants alike: read the ratios)")
    report(f"measure ({args.utts} utts, {frames} frames; best of {R}, interleaved)", table, res, args.json)


if __name__ == "__main__":
    main()
