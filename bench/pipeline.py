"""Benchmark of the pipeline's bookkeeping on the demo: what a user waits for when nothing is to do.

In a git clone of this checkout (``--workdir``, default bench/out/pipeline; reused when already
built), ``dvc repro`` builds the demo at ``--size`` (the demo's default: 200 utterances per
language), then each no-op command runs ``--repeats`` times, interleaved:

- ``dvc status`` and a no-op ``dvc repro`` (target: < 3 s each),
- a no-op ``snakemake -n`` (target: < 3 s), and ``babelflow touch`` (after ``dvc pull``),
- baselines in the same run: ``dvc --version`` and ``snakemake --version`` (interpreter + import
  start-up, which no command can beat): the ratio says what the bookkeeping itself adds.

Also reported: the first ``dvc repro`` against a plain ``snakemake --cores all`` of the same
workflow in a second clone (DVC's per-stage Snakemake start-up and hashing). Medians; the box is
noisy, so read the ratios.
Run:  .venv/bin/python bench/pipeline.py [--workdir bench/out/pipeline] [--repeats 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from egs import report  # noqa: E402

ENV = {**os.environ, "DVC_NO_ANALYTICS": "1",
       "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


def sh(cmd: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def clone(dest: Path, size: str) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    sh(["git", "clone", "-q", str(REPO), str(dest)], REPO.parent)
    for f in ("dvc.yaml", "params.yaml"):  # the working tree's, committed or not
        shutil.copy(REPO / f, dest / f)
    if size != "default":
        sh(["sed", "-i", f"s/^  size: default/  size: {size}/", "params.yaml"], dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "pipeline")
    ap.add_argument("--size", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    res: dict = {}
    proj = args.workdir / "dvc"
    if not (proj / "dvc.lock").exists():
        clone(proj, args.size)
        res["dvc_repro_first_s"] = sh(["dvc", "repro"], proj)
        plain = clone(args.workdir / "plain", args.size)
        res["snakemake_first_s"] = sh(["snakemake", "--cores", "all"], plain)
        shutil.rmtree(plain)
    cmds = {"dvc status": ["dvc", "status"], "dvc repro (no-op)": ["dvc", "repro"],
            "snakemake -n (no-op)": ["snakemake", "-n", "--cores", "all"], "babelflow touch": ["babelflow", "touch"],
            "dvc --version": ["dvc", "--version"], "snakemake --version": ["snakemake", "--version"]}
    times: dict[str, list[float]] = {k: [] for k in cmds}
    for _ in range(args.repeats):
        for name, cmd in cmds.items():
            times[name].append(sh(cmd, proj))
    med = {k: statistics.median(v) for k, v in times.items()}
    res.update({f"{k} s": v for k, v in med.items()})
    # the start-up each command pays: `babelflow touch` runs the Snakemake DAG and `snakemake --touch`
    base = {"dvc status": "dvc --version", "dvc repro (no-op)": "dvc --version",
            "snakemake -n (no-op)": "snakemake --version", "babelflow touch": "snakemake --version"}
    rows = []
    for name, ref in base.items():
        b = med[ref]
        rows.append((name, f"{med[name]:.2f} s", f"{med[name] / b:.2f}x `{ref}` ({b:.2f} s)",
                     "< 3 s" if "touch" not in name else "-"))
    if "dvc_repro_first_s" in res:
        r = res["dvc_repro_first_s"] / res["snakemake_first_s"]
        rows.append(("first `dvc repro` (8 stages)", f"{res['dvc_repro_first_s']:.0f} s",
                     f"{r:.2f}x plain `snakemake --cores all` ({res['snakemake_first_s']:.0f} s)", "-"))
    report("pipeline bookkeeping (demo)", rows, res, args.json)


if __name__ == "__main__":
    main()
