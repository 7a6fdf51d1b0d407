"""Benchmark of alignments from scratch: lang prep, mono, align, tri, align on the demo corpus.

Each stage runs as the workflow runs it (a ``babelflow`` subprocess, start-up included) on one
language of the synthesised demo corpus, split into ``--nj`` jobs; the figure is seconds of wall
time per hour of audio *per core* (wall x cores used / hours), the Kaldi way of quoting training
cost. The baseline, measured in the same run on the same audio, is the MFCC extraction the GMM
stages start from (``babelflow kaldi compute-feats mfcc``), so ratios cancel the machine's speed.
Alignment quality against the synthesiser's timings (``babelflow ali-compare``) is printed too.

Run:  .venv/bin/python bench/align.py [--utts 200] [--lang en] [--nj 2] [--workdir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
VOICES = {"en": "en-us", "de": "de", "es": "es", "fr": "fr"}


def babelflow(*args: str) -> float:
    """Run one babelflow command; its wall time in seconds."""
    t = time.perf_counter()
    proc = subprocess.run(["babelflow", *map(str, args)], env=ENV, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"babelflow {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def hours_of_audio(data: Path) -> float:
    return sum(float(line.split()[1]) for line in (data / "utt2dur").read_text().splitlines()) / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utts", type=int, default=200)
    ap.add_argument("--lang", default="en", choices=sorted(VOICES))
    ap.add_argument("--nj", type=int, default=2)
    ap.add_argument("--num-leaves", type=int, default=50)
    ap.add_argument("--totgauss", type=int, default=200)
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-align-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus, lang = work / "corpus", a.lang
    if not (corpus / lang / "data" / "wav.scp").is_file():
        babelflow("demo-corpus", "--out", corpus, "--lang", lang, "--langs", f"{lang}={VOICES[lang]}",
                  "--utts-per-lang", a.utts, "--test-utts-per-lang", 0)
    src = corpus / lang / "data"
    hours = hours_of_audio(src)
    cores = min(a.nj, os.cpu_count() or 1)
    times = {"mfcc (baseline)": babelflow("kaldi", "compute-feats", "mfcc", "--dither=0", f"scp:{src}/wav.scp",
                                          f"ark:{work}/mfcc.ark")}
    data, g = work / "data", work / "gmm"
    babelflow("data", "--nj", a.nj, src, data)
    times["prepare-lang"] = babelflow("prepare-lang", "--add-oov", corpus / lang / "dict" / "lexicon.txt", g / "lang")
    times["mono"] = babelflow("train-gmm", "mono", "--quiet", "--nj", a.nj, data, g / "lang", g / "mono")
    times["align (mono)"] = babelflow("align-gmm", "--quiet", "--nj", a.nj, data, g / "lang", g / "mono",
                                      g / "mono_ali")
    times["tri"] = babelflow("train-gmm", "tri", "--quiet", "--nj", a.nj, f"--num-leaves={a.num_leaves}",
                             f"--totgauss={a.totgauss}", "--realign-iters=" + ",".join(map(str, range(1, 35))),
                             data, g / "lang", g / "mono_ali", g / "tri")
    times["align (tri)"] = babelflow("align-gmm", "--quiet", "--nj", a.nj, data, g / "lang", g / "tri", g / "tri_ali")
    quality = {}
    for stage in ("mono_ali", "tri_ali"):
        out = subprocess.run(["babelflow", "ali-compare", corpus / lang / "ali", g / stage], env=ENV,
                             capture_output=True, text=True, check=True).stdout
        quality[stage] = json.loads(out)
    base = times["mfcc (baseline)"]
    print(f"# alignments from scratch: {lang}, {a.utts} utts = {hours * 60:.1f} min of audio, nj={a.nj} "
          f"({cores} cores), tri {a.num_leaves} leaves / {a.totgauss} Gaussians\n")
    print("| stage | wall s | s per hour of audio per core | vs MFCC extraction |")
    print("|---|---|---|---|")
    total = 0.0
    for name, t in times.items():
        c = 1 if name.startswith("mfcc") or name == "prepare-lang" else cores
        total += t if not name.startswith("mfcc") else 0
        print(f"| {name} | {t:.1f} | {t * c / hours:.0f} | {t / base:.1f}x |")
    print(f"| lang + mono + tri + aligns | {total:.1f} | {total * cores / hours:.0f} | {total / base:.1f}x |\n")
    print("| alignment | frame agreement | boundaries within 20 ms | within 50 ms | median |")
    print("|---|---|---|---|---|")
    for stage, q in quality.items():
        print(f"| {stage} | {q['frame_agreement']:.3f} | {q['within_20ms']:.3f} | {q['within_50ms']:.3f} "
              f"| {q['boundary_median_ms']:.0f} ms |")
    if a.json:
        a.json.write_text(json.dumps({"hours": hours, "nj": a.nj, "times": times, "quality": quality}, indent=2))


if __name__ == "__main__":
    main()
