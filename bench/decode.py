"""Benchmark of decoding: graph building, and the GMM and the matrix (network-output) decoders on the demo corpus.

A tri GMM is trained on one language of the synthesised demo corpus (as bench/align.py does), a bigram
LM is made from its training text, and its held-out test set is decoded. Each stage runs as the workflow
runs it (a ``babelflow`` subprocess, start-up included). Measured:

* ``babelflow mkgraph`` wall time, at self-loop scale 1.0 (the GMM decoder's graph) and 0.1 (the matrix one's);
* ``babelflow decode`` with the GMM end to end (features, likelihoods, search, LMWT/WIP sweep and scoring);
* ``babelflow decode --loglikes ark:...`` on the same GMM's per-frame log-likelihoods written as a Kaldi ark,
  the path a network's ``babelflow compute`` output takes, with and without ``--skip-scoring``;
* in process, on those matrices, utterance by utterance and interleaved: the decode as it is (one search whose
  raw lattice gives the best path and the LMWT/WIP sweep) against the two searches it replaced (the best-path
  search of kaldi-hmm-gmm's LatticeFasterDecoder on top), and the lattice's forward/backward costs a frame at
  a time against the general topological pass (the fallback), with their outputs compared.

The figure is the real-time factor *per core*: wall x cores used / seconds of audio (a decoder uses one
worker process per job: ``--nj``, at most the test set's speakers). The decode dirs' own metrics.json
figures (``rtf``: wall / audio; ``rtf_decode_per_core``: seconds inside the decoding workers per audio
second, start-up and scoring excluded) and the WER are printed too. The baseline,
measured in the same run on the same test audio, is single-process MFCC extraction
(``babelflow kaldi compute-feats mfcc``), so the ratios cancel the machine's speed.

Run:  .venv/bin/python bench/decode.py [--utts 200] [--test-utts 40] [--lang en] [--nj 2] [--workdir DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def seconds_of_audio(data: Path) -> float:
    return sum(float(line.split()[1]) for line in (data / "utt2dur").read_text().splitlines())


def write_gmm_loglikes(model_dir: Path, data: Path, ark: Path) -> float:
    """The GMM's per-frame log-likelihoods of every utterance of ``data`` as a Kaldi ark (what the GMM decoder's
    workers compute, CMVN per speaker over the whole dir); the seconds it took."""
    from babelflow.decode.decoder import gmm_loglikes
    from babelflow.gmm.features import GmmFeatureSpec, job_features
    from babelflow.gmm.model import read_gmm_model
    from babelflow.tables import open_matrix_writer

    t = time.perf_counter()
    am, spec = read_gmm_model(model_dir / "final.mdl").am, GmmFeatureSpec.read(model_dir)
    with open_matrix_writer(f"ark:{ark}") as w:
        for key, feats in sorted(job_features(spec, data).items()):
            w[key] = gmm_loglikes(am, feats)
    return time.perf_counter() - t


def search_ratios(graph: Path, model: Path, ark: Path, rounds: int = 2) -> dict:
    """Seconds per variant, summed over the utterances of ``ark`` (best of ``rounds``, variants interleaved):
    the decode (one search + sweep), the best-path search it no longer runs, and the sweep with the lattice
    costs forced frame-wise / forced through the general pass, on the matrices as they are and flattened
    (x 0.1: a weak model's bushier lattices)."""
    from babelflow.decode import lattice
    from babelflow.decode.decode_cli import read_graph
    from babelflow.decode.decoder import DecodeConfig, Decoder
    from babelflow.kaldi.transition_model import read_transition_model
    from babelflow.tables import read_matrices

    fst, tm = read_graph(graph / "HCLG.fst"), read_transition_model(model / "final.mdl")
    sweep, best_only = Decoder(fst, tm, DecodeConfig()), Decoder(fst, tm, DecodeConfig(lmwts=(), wips=()))
    sharp = dict(read_matrices(f"ark:{ark}"))
    flat = {k: m * np.float32(0.1) for k, m in sharp.items()}
    layout, threshold = lattice._layout, lattice.ARCS_PER_FRAME
    layouts = {"frame-wise": (layout, 0), "general": (lambda *a: None, threshold)}
    out: dict = {}
    for _ in range(rounds):
        for mname, mats in (("as is", sharp), ("flattened", flat)):
            runs = [("one search + sweep", sweep, "auto"), ("best-path search", best_only, "auto"),
                    ("sweep, frame-wise", sweep, "frame-wise"), ("sweep, general", sweep, "general")]
            got = {}
            for name, dec, how in runs:
                lattice._layout, lattice.ARCS_PER_FRAME = layouts.get(how, (layout, threshold))
                t = time.perf_counter()
                got[name] = {k: dec.decode(k, m) for k, m in mats.items()}
                key = f"{mname}: {name}"
                out[key] = min(out.get(key, float("inf")), time.perf_counter() - t)
            lattice._layout, lattice.ARCS_PER_FRAME = layout, threshold
            a, b = got["sweep, frame-wise"], got["sweep, general"]
            out[f"{mname}: sweeps equal"] = all(
                (a[k] is None) == (b[k] is None) and (a[k] is None or a[k].sweep == b[k].sweep) for k in a)
            out[f"{mname}: lattice arcs per frame"] = _arcs_per_frame(sweep, mats)
    return out


def _arcs_per_frame(dec, mats: dict) -> float:
    import kaldi_decoder

    from babelflow.decode.lattice import lattice_arrays

    arcs = frames = 0
    for m in mats.values():
        scaled = np.ascontiguousarray(m[:, dec.tid2pdf] * np.float32(dec.config.acoustic_scale))
        dec._simple.decode(kaldi_decoder.DecodableCtc(scaled))
        arcs += len(lattice_arrays(dec._simple.get_raw_lattice()[1])[3])
        frames += len(m)
    return arcs / max(frames, 1)


def build(work: Path, a: argparse.Namespace) -> tuple[Path, Path, Path, Path, Path]:
    """Corpus, data dirs, lang, mono/tri GMMs and the LM, each made unless ``work`` already has it."""
    corpus, lang = work / "corpus", a.lang
    if not (corpus / lang / "test" / "wav.scp").is_file():
        shutil.rmtree(corpus, ignore_errors=True)
        babelflow("demo-corpus", "--out", corpus, "--lang", lang, "--langs", f"{lang}={VOICES[lang]}",
                  "--utts-per-lang", a.utts, "--test-utts-per-lang", a.test_utts)
    data, test, g = work / "data", work / "test", work / "gmm"
    if not (data / "wav.scp").is_file():
        babelflow("data", "--nj", a.nj, corpus / lang / "data", data)
    if not (test / "wav.scp").is_file():
        babelflow("data", "--nj", a.nj, corpus / lang / "test", test)
    if not (g / "lang" / "L_disambig.fst").is_file():
        babelflow("prepare-lang", "--add-oov", corpus / lang / "dict" / "lexicon.txt", g / "lang")
    if not (g / "mono" / "final.mdl").is_file():
        babelflow("train-gmm", "mono", "--quiet", "--nj", a.nj, data, g / "lang", g / "mono")
    if not (g / "mono_ali" / "num_jobs").is_file():
        babelflow("align-gmm", "--quiet", "--nj", a.nj, data, g / "lang", g / "mono", g / "mono_ali")
    if not (g / "tri" / "final.mdl").is_file():
        babelflow("train-gmm", "tri", "--quiet", "--nj", a.nj, f"--num-leaves={a.num_leaves}",
                  f"--totgauss={a.totgauss}", "--realign-iters=" + ",".join(map(str, range(1, 35))),
                  data, g / "lang", g / "mono_ali", g / "tri")
    lm = work / "lm.arpa"
    if not lm.is_file():
        babelflow("make-lm", "--order", 2, data / "text", lm)
    return test, g / "lang", g / "tri", lm, g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--utts", type=int, default=200, help="training utterances")
    ap.add_argument("--test-utts", type=int, default=40, help="test utterances (decoded)")
    ap.add_argument("--lang", default="en", choices=sorted(VOICES))
    ap.add_argument("--nj", type=int, default=2)
    ap.add_argument("--num-leaves", type=int, default=50)
    ap.add_argument("--totgauss", type=int, default=200)
    ap.add_argument("--workdir", type=Path, help="reuse what this dir already has (corpus, GMMs, LM)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench-decode-"))
    work.mkdir(parents=True, exist_ok=True)
    test, lang_dir, tri, lm, g = build(work, a)
    audio = seconds_of_audio(test)
    cores = min(a.nj, os.cpu_count() or 1)
    times = {"mfcc (baseline)": babelflow("kaldi", "compute-feats", "mfcc", "--dither=0", f"scp:{test}/wav.scp",
                                          "ark:/dev/null")}
    graphs = {"gmm": g / "graph", "mat": g / "graph_sl0.1"}
    for d in graphs.values():
        shutil.rmtree(d, ignore_errors=True)
    for scale, gr in (("1.0", graphs["gmm"]), ("0.1", graphs["mat"])):
        times[f"mkgraph (self-loop {scale})"] = babelflow("mkgraph", "--self-loop-scale", scale, lang_dir, lm, tri, gr)
    ark = work / "loglikes.ark"
    times["gmm log-likelihoods -> ark"] = write_gmm_loglikes(tri, test, ark)
    runs = {"decode gmm": ("decode_gmm", graphs["gmm"], ()),
            "decode matrix": ("decode_mat", graphs["mat"], ("--loglikes", f"ark:{ark}")),
            "decode matrix --skip-scoring": ("decode_mat_noscore", graphs["mat"],
                                             ("--loglikes", f"ark:{ark}", "--skip-scoring"))}
    metrics = {}
    for name, (sub, graph, extra) in runs.items():
        out = g / sub
        shutil.rmtree(out, ignore_errors=True)
        times[name] = babelflow("decode", "--nj", a.nj, *extra, graph, tri, test, out)
        metrics[name] = json.loads((out / "metrics.json").read_text())
    base = times["mfcc (baseline)"] / audio
    stages = search_ratios(graphs["mat"], tri, ark)
    startup = babelflow("--help")
    print(f"# decoding: {a.lang}, {a.test_utts} test utts = {audio / 60:.1f} min of audio, nj={a.nj} ({cores} cores); "
          f"tri {a.num_leaves} leaves / {a.totgauss} Gaussians, bigram LM of {a.utts} training utts\n")
    print("| stage | wall s | RTF per core | vs MFCC extraction | metrics rtf (wall) | rtf_decode_per_core | WER |")
    print("|---|---|---|---|---|---|---|")
    for name, t in times.items():
        if name.startswith("mkgraph"):
            print(f"| {name} | {t:.2f} | | | | | |")
            continue
        m = metrics.get(name, {})
        rtf = t * (m.get("workers", 1) if m else 1) / audio
        cols = (f"{m['rtf']:.3f} | {m['rtf_decode_per_core']:.3f} | {m['wer']:.2f}%" if "wer" in m else
                f"{m['rtf']:.3f} | {m['rtf_decode_per_core']:.3f} | not scored" if m else " | | ")
        print(f"| {name} | {t:.2f} | {rtf:.3f} | {rtf / base:.1f}x | {cols} |")
    print(f"\nwall times include each command's start-up: `babelflow --help` takes {startup:.2f} s here; WER is the "
          "best of the LMWT/WIP sweep (score.sh) on the test set's own words.")
    print("\nin process, one core, the same matrices (seconds over the test set, best of 2):")
    for m in ("as is", "flattened"):
        one, best_path = stages[f"{m}: one search + sweep"], stages[f"{m}: best-path search"]
        fw, gen = stages[f"{m}: sweep, frame-wise"], stages[f"{m}: sweep, general"]
        print(f"- {m} ({stages[f'{m}: lattice arcs per frame']:.0f} lattice arcs per frame): one search + sweep "
              f"{one:.2f} vs the two searches it replaced {one + best_path:.2f} = {one / (one + best_path):.2f}x; "
              f"lattice costs frame-wise vs the general pass {fw:.2f} vs {gen:.2f} = {fw / gen:.2f}x "
              f"(sweeps equal: {stages[f'{m}: sweeps equal']})")
    if a.json:
        a.json.write_text(json.dumps({"audio_seconds": audio, "nj": a.nj, "cores": cores, "startup": startup,
                                      "times": times, "metrics": metrics, "in_process": stages}, indent=2))


if __name__ == "__main__":
    main()
