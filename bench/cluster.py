"""Benchmark of the SLURM path against the local path: the same demo chain, both profiles.

Two git clones of this checkout (``--workdir``); the demo params, optionally smaller
(``--utts-per-lang``, ``--langs``), then interleaved runs of

- ``snakemake --profile workflow/profiles/local`` (baseline) and
- ``snakemake --profile workflow/profiles/slurm`` on the running cluster (start one with
  ``tests/slurm/cluster.sh start``),

each from scratch (``exp/``, ``corpus/``, ``logs/``, ``.snakemake/`` removed). Reported: wall
time of each and the ratio, jobs submitted to SLURM (from Snakemake's log and ``sacct``), and
the overhead per SLURM job (extra wall time / jobs). On a real cluster the work itself spreads
over nodes; here both share one 2-core machine, so the ratio is the pure overhead of the queue
(submission, scheduling, status polling every ``slurm-init-seconds-before-status-checks``+).
Run:  .venv/bin/python bench/cluster.py [--utts-per-lang 50] [--langs en,de] [--repeats 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from egs import report  # noqa: E402
from pipeline import ENV, clone  # noqa: E402

ALL_LANGS = {"en": "en-us", "de": "de", "es": "es", "fr": "fr"}


def configure(proj: Path, utts: int | None, langs: list[str]) -> None:
    params = yaml.safe_load((proj / "params.yaml").read_text())
    if utts:
        params["demo"]["utts_per_lang"] = utts
    params["demo"]["langs"] = {k: ALL_LANGS[k] for k in langs}
    params["merge"]["weights"] = {}
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def fresh_run(proj: Path, profile: str, extra: list[str]) -> tuple[float, str]:
    for d in ("exp", "corpus", "logs", ".snakemake"):
        shutil.rmtree(proj / d, ignore_errors=True)
    t = time.perf_counter()
    proc = subprocess.run(["snakemake", "--profile", f"workflow/profiles/{profile}", *extra], cwd=proj, env=ENV,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{profile} run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return wall, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=REPO / "bench" / "out" / "cluster")
    ap.add_argument("--utts-per-lang", type=int, default=None, help="default: the demo's (200)")
    ap.add_argument("--langs", default="en,de,es,fr")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--init-seconds", default="10", help="slurm-init-seconds-before-status-checks (profile: 10)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if subprocess.run(["sinfo", "-h"], capture_output=True).returncode != 0:
        raise SystemExit("no SLURM cluster answers: tests/slurm/cluster.sh start")
    projs = {}
    for profile in ("local", "slurm"):
        projs[profile] = clone(args.workdir / profile, "default")
        configure(projs[profile], args.utts_per_lang, args.langs.split(","))
    walls: dict[str, list[float]] = {"local": [], "slurm": []}
    ids: list[str] = []
    local_jobs = 0
    for _ in range(args.repeats):
        w, log = fresh_run(projs["local"], "local", [])
        walls["local"].append(w)
        local_jobs = log.count("Finished jobid")
        w, log = fresh_run(projs["slurm"], "slurm", ["--slurm-init-seconds-before-status-checks", args.init_seconds])
        walls["slurm"].append(w)
        ids = re.findall(r"SLURM jobid (\d+)", log)
    sacct = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(ids)],
                           capture_output=True, text=True).stdout
    completed = sum(1 for line in sacct.splitlines() if line.endswith("|COMPLETED"))
    loc, slu = min(walls["local"]), min(walls["slurm"])
    res = {"local_s": walls["local"], "slurm_s": walls["slurm"], "slurm_jobs": len(ids), "sacct_completed": completed,
           "jobs_total": local_jobs, "config": {"utts_per_lang": args.utts_per_lang, "langs": args.langs}}
    rows = [("local profile (baseline)", f"{loc:.0f} s", "1.00x", "-"),
            ("SLURM profile", f"{slu:.0f} s", f"{slu / loc:.2f}x local", "-"),
            ("jobs through SLURM", f"{len(ids)} ({completed} COMPLETED in sacct)", f"of {local_jobs} jobs", "-"),
            ("overhead per SLURM job", f"{(slu - loc) / max(len(ids), 1):.1f} s", "-", "-")]
    report(f"SLURM vs local ({args.langs}, {args.utts_per_lang or 200} utts/lang)", rows, res, args.json)


if __name__ == "__main__":
    main()
