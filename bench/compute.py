"""Benchmark of babelflow's inference and priors steps: ``compute`` and ``compute_priors``.

Model: the recipe-shaped TDNN (bench/train.py's ``RECIPE``: 6 x 512 relu-renorm, splices {-2..2},{0},
{-1,2},{-3,3},{-3,3},{-7,2}, context 16/12, ~2.4M parameters) with one frame head of the task's pdfs,
random init (throughput does not depend on training), saved as a task model dir with
``save_task_model`` and the meta ``split_model`` writes (uniform priors until step 2 replaces them).
Data: bench/egs.py's large one-language corpus (2000 utts, ~320k frames, fbank 40) and its frame egs
(8 frames/eg, float16), reused from bench/out/egs/large when present, else built the same way under
``--workdir``. In one run:

1. compute: ``infer.compute(model_dir, scp:feats.scp, ark:<temp file>)`` (read features, pad, forward,
   subtract log priors, write a binary ark) vs a bare forward of the same model on the same features
   preloaded as padded in-memory tensors (same chunking, no I/O): frames/s and the ratio (target >= 0.8).
   The real CLI (``babelflow compute``) as a subprocess over the whole corpus and over one utterance;
   the one-utterance run is its start-up (python + torch import + model load), reported separately.
2. priors: ``compute_priors(model_dir, egs_dir, num_egs=all)`` over the corpus' training egs, as
   seconds per 1M frames, vs a bare forward of the same number of 256 x (16+8+12)-frame batches.
3. GPU: bare forwards on the GPU when ``torch.cuda.is_available()`` (``compute``/``compute_priors``
   themselves load the model on the CPU, they have no device option).

Timings are the best (minimum) of ``--repeats`` runs, interleaved (AB, BA, ...) so drift on a noisy
2-core box hits all alike; read the ratios.
Run:  .venv/bin/python bench/compute.py [--workdir bench/out/compute] [--repeats 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from egs import ENV, LANG, report, timed  # noqa: E402  (bench/egs.py: corpus setup, interleaved timing)
from train import RECIPE, large_egs  # noqa: E402  (bench/train.py: the recipe TDNN, the large egs)

from babelflow.egs.reader import EgsDir  # noqa: E402
from babelflow.nnet.checkpoint import load_task_model, save_task_model  # noqa: E402
from babelflow.nnet.infer import compute, padded  # noqa: E402
from babelflow.nnet.model import ModelConfig, MultiTaskModel, TaskSpec  # noqa: E402
from babelflow.nnet.taskmodel import compute_priors  # noqa: E402
from babelflow.tables import read_matrices  # noqa: E402

CHUNK, BATCH = 2000, 256  # frame_outputs' chunk, average_posteriors' batch


def make_model_dir(out: Path, egs: EgsDir) -> Path:
    """A frame-task model dir as ``split_model`` + priors would leave it, without training."""
    torch.manual_seed(0)
    pdfs, dim = egs.num_outputs, int(egs.info["feat_dim"])
    model = MultiTaskModel(ModelConfig.from_dict(RECIPE), dim, [TaskSpec(LANG, "frame", pdfs)], head_names=["output"])
    torch.nn.init.normal_(model.heads["output"].output.weight, std=0.1)  # not all-zero logits
    meta = {"task": LANG, "kind": "frame", "num_outputs": pdfs, "left_context": model.left_context,
            "right_context": model.right_context, "input_dim": dim, "ivector_dim": 0,
            "feat_type": egs.info.get("feat_type", "fbank"), "cmvn_opts": "--norm-means=false --norm-vars=false",
            "egs_dir": str(egs.path), "labels": [], "feature_conf": "",
            "priors": torch.full((pdfs,), 1.0 / pdfs, dtype=torch.float32), "prior_method": "uniform"}
    save_task_model(out, model, meta)
    return out


def bare_utts(model: MultiTaskModel, xs: list[torch.Tensor], device: str = "cpu") -> None:
    """frame_outputs' forward alone: the preloaded padded utterances, same chunks, no I/O."""
    lc, rc = model.left_context, model.right_context
    with torch.no_grad():
        for x in xs:
            for s in range(0, x.shape[0] - lc - rc, CHUNK):
                model(x[s:s + lc + min(CHUNK, x.shape[0] - lc - rc - s) + rc][None], 0)
    if device == "cuda":
        torch.cuda.synchronize()


def bare_egs(model: MultiTaskModel, batch: torch.Tensor, num_egs: int) -> None:
    """average_posteriors' forward alone: num_egs examples in batches of 256, one preloaded tensor."""
    with torch.no_grad():
        for s in range(0, num_egs, BATCH):
            model(batch[:min(BATCH, num_egs - s)], 0)
    if batch.is_cuda:
        torch.cuda.synchronize()


def cli(model_dir: Path, scp: Path, out: Path) -> None:
    subprocess.run(["babelflow", "compute", str(model_dir), f"scp:{scp}", f"ark:{out}"], env=ENV, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("bench/out/compute"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    R, W, res, table = args.repeats, args.workdir.resolve(), {}, []
    W.mkdir(parents=True, exist_ok=True)
    load0 = os.getloadavg()[0]
    egs = EgsDir(large_egs(W))
    scp = egs.path.parent / "feats" / "feats.scp"  # <root>/large/{feats,egs_float16}, as bench/egs.py lays out
    model_dir = make_model_dir(W / "model", egs)
    model, _ = load_task_model(model_dir)
    lc, rc = model.left_context, model.right_context
    xs = [torch.from_numpy(padded(np.asarray(m, np.float32), lc, rc)) for _, m in read_matrices(f"scp:{scp}")]
    frames = sum(x.shape[0] - lc - rc for x in xs)
    one = W / "one_utt.scp"
    one.write_text(scp.read_text().splitlines()[0] + "\n")
    bare_utts(model, xs[:50])  # untimed: first-use costs (oneDNN, allocator)
    print(f"# compute benchmark: {scp} ({len(xs)} utts, {frames} frames), model {model.num_parameters() / 1e6:.2f}M"
          f" parameters, {egs.num_outputs} pdfs, context ({lc}, {rc}); torch {torch.__version__},"
          f" {torch.get_num_threads()} threads; best of {R} interleaved runs\n")

    # 1. compute (whole path, in process; then the CLI) vs the bare forward
    with tempfile.TemporaryDirectory(dir=W) as tmp:
        out = {k: Path(tmp) / f"{k}.ark" for k in ("compute", "cli", "one")}
        t = timed({"bare": lambda: bare_utts(model, xs),
                   "compute": lambda: compute(model_dir, f"scp:{scp}", f"ark:{out['compute']}"),
                   "cli": lambda: cli(model_dir, scp, out["cli"]),
                   "cli_one_utt": lambda: cli(model_dir, one, out["one"])}, R)
        ark_mb = out["compute"].stat().st_size / 2**20
    fps = {k: frames / t[k] for k in ("bare", "compute", "cli")}
    startup, ratio = t["cli_one_utt"], t["bare"] / t["compute"]
    cli_net = frames / max(t["cli"] - startup, 1e-9)
    res["compute"] = {"frames": frames, "fps": fps, "ratio_compute_vs_bare": ratio, "cli_startup_s": startup,
                      "cli_fps_without_startup": cli_net, "times_s": t}
    print(f"1. compute bare forward (preloaded, padded) {fps['bare'] / 1e3:6.1f}k frames/s  [baseline]\n"
          f"           compute() scp -> ark           {fps['compute'] / 1e3:6.1f}k frames/s  {ratio:.3f}x bare"
          f" (target >= 0.8)\n"
          f"           `babelflow compute` CLI        {fps['cli'] / 1e3:6.1f}k frames/s  {t['cli']:.2f} s wall;"
          f" start-up (one-utterance run) {startup:.2f} s -> {cli_net / 1e3:.1f}k frames/s without it"
          f" ({cli_net / fps['compute']:.2f}x in-process compute); output ark {ark_mb:.0f} MiB")
    table += [("compute() scp -> ark vs bare forward (CPU)", f"{fps['compute'] / 1e3:.1f}k fr/s", f"{ratio:.2f}x",
               ">= 0.8x"),
              ("`babelflow compute` CLI: start-up; frames/s without it", f"{startup:.2f} s; {cli_net / 1e3:.1f}k fr/s",
               f"{cli_net / fps['compute']:.2f}x in-process", "—")]

    # 2. priors over all training egs vs the bare forward of as many 8-frame batches
    num_egs = sum(len(a) for a in egs.archives("train"))
    batch = torch.randn(BATCH, lc + int(egs.info["frames_per_eg"]) + rc, model.input_dim)
    got: dict = {}
    t = timed({"bare": lambda: bare_egs(model, batch, num_egs),
               "priors": lambda: got.update(compute_priors(model_dir, egs.path, num_egs=num_egs))}, R)
    pf = got["frames"]
    per_m, bare_m = t["priors"] * 1e6 / pf, t["bare"] * 1e6 / pf
    res["priors"] = {"num_egs": num_egs, "frames": pf, "s_per_1M_frames": per_m, "bare_s_per_1M_frames": bare_m,
                     "ratio_bare_vs_priors": bare_m / per_m, "times_s": t}
    print(f"\n2. priors  compute_priors over {num_egs} egs ({pf} frames): {per_m:.2f} s per 1M frames"
          f" ({pf / t['priors'] / 1e3:.1f}k frames/s); bare forward of the same {BATCH}-eg batches {bare_m:.2f} s"
          f" -> {bare_m / per_m:.2f}x of it is the forward\n           (8-frame egs recompute {lc}+{rc} context"
          f" frames each: {fps['bare'] * bare_m / 1e6:.1f}x the cost per frame of whole utterances)")
    table.append((f"compute_priors, all {num_egs} egs, s per 1M frames (bare forward)",
                   f"{per_m:.2f} s ({bare_m:.2f} s)", f"{bare_m / per_m:.2f}x forward", "—"))

    # 3. GPU
    if torch.cuda.is_available():
        gm, gx, gb = model.to("cuda"), [x.cuda() for x in xs], batch.cuda()
        bare_utts(gm, gx[:50], "cuda")
        t = timed({"utts": lambda: bare_utts(gm, gx, "cuda"), "egs": lambda: bare_egs(gm, gb, num_egs)}, R)
        g = res["gpu"] = {"device": torch.cuda.get_device_name(), "utts_fps": frames / t["utts"],
                          "egs_s_per_1M_frames": t["egs"] * 1e6 / pf}
        print(f"\n3. GPU     {g['device']}: bare forward {g['utts_fps'] / 1e3:.0f}k frames/s ="
              f" {g['utts_fps'] / fps['compute']:.1f}x CPU compute(); 8-frame egs {g['egs_s_per_1M_frames']:.2f} s per"
              f" 1M frames = {per_m / g['egs_s_per_1M_frames']:.1f}x faster than CPU priors\n           (compute() and"
              f" compute_priors() load the model on the CPU: no device option, these are the forwards alone)")
        table.append(("GPU bare forward, utterances (vs CPU compute())", f"{g['utts_fps'] / 1e3:.0f}k fr/s",
                      f"{g['utts_fps'] / fps['compute']:.1f}x", "—"))
    else:
        print("\n3. GPU     no GPU present (torch.cuda.is_available() is False): skipped")

    res["loadavg"] = load = (load0, os.getloadavg()[0])
    spread = {f"{s}.{k[:-4]}": max(v) / min(v) for s in ("compute", "priors") for k, v in res[s]["times_s"].items()
              if k.endswith("_all")}
    noisy = [f"{k} {v:.1f}x" for k, v in spread.items() if v > 1.3]
    print(f"\n# 1-min load average at start / end: {load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} cores; slowest/"
          f"fastest run > 1.3x (other load competed, those runs are discarded by taking the best): "
          f"{', '.join(noisy) or 'none'}")
    report(f"measure ({frames} frames; best of {R}, interleaved)", table, res, args.json)


if __name__ == "__main__":
    main()
