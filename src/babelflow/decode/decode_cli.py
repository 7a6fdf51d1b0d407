"""``babelflow decode`` (steps/nnet3/decode.sh + local/score.sh), ``babelflow score`` and ``compute-wer``.

A decode dir gets Kaldi's layout, so that ``grep WER exp/*/decode*/wer_* | utils/best_wer.sh`` works::

    num_jobs  log/decode.<job>.log       best path per utterance, its costs, log-likelihood per frame
    lat.<job>.gz                         word lattices, Kaldi text CompactLattice (no alignments)
    wer_<lmwt>_<wip>                     compute-wer output per LM weight and insertion penalty
    scoring_kaldi/best_wer  test_filt.txt  penalty_<wip>/<lmwt>.txt  penalty_<wip>/log/best_path.<lmwt>.log
    scoring_kaldi/wer_details/{lmwt,wip,per_utt,per_spk}
    metrics.json                         wer, ser, best lmwt/wip, utterances, real-time factors

The data dir is split by speaker into ``nj`` jobs, decoded by a pool of worker processes (each
loads the graph once). The network part runs in this process, on the GPU when there is one;
GMM features and likelihoods are computed in the workers.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ..errors import BabelflowError
from ..io import environment

log = logging.getLogger("babelflow")
_WORKER: dict[str, Any] = {}  # in a worker process: this run's decoder (and GMM)


# ----------------------------------------------------------------------------- graph, model, workers
def read_graph(path: str | os.PathLike) -> Any:
    """HCLG.fst (vector, or Kaldi's const FST) for the decoders."""
    from .fstio import read_fst

    return read_fst(path)


def read_words(path: str | os.PathLike) -> dict[int, str]:
    """words.txt as {id: word}."""
    out = {}
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        f = line.split()
        if len(f) != 2 or not f[1].isdigit():
            raise BabelflowError(f"{path}:{n}: expected 'word id'")
        out[int(f[1])] = f[0]
    return out


def _init_worker(graph: str, tm: Any, config: Any, gmm_dir: str | None) -> None:
    from .decoder import Decoder

    _WORKER["decoder"] = Decoder(read_graph(graph), tm, config)
    if gmm_dir:
        from ..gmm.features import GmmFeatureSpec
        from ..gmm.model import read_gmm_model

        _WORKER["gmm"] = read_gmm_model(Path(gmm_dir) / "final.mdl").am, GmmFeatureSpec.read(gmm_dir)


def _run_job(items: list | None = None, split_dir: str | None = None) -> dict:
    """One job: decode ``items`` (key, log-likelihoods), or the GMM features of ``split_dir``."""
    from .decoder import gmm_loglikes

    t0 = time.perf_counter()
    if split_dir is not None:
        from ..gmm.features import job_features

        am, spec = _WORKER["gmm"]
        items = ((k, gmm_loglikes(am, f)) for k, f in job_features(spec, split_dir).items())
    done, failed = [], []
    for key, ll in items:
        r = _WORKER["decoder"].decode(key, ll)
        if r is None:
            failed.append((key, len(ll)))
        else:
            done.append(r)
    return {"results": done, "failed": failed, "seconds": time.perf_counter() - t0}


def _nnet_loglikes(model_dir: str, wav: str, segments: str | None, utt2spk: dict[str, str],
                   feats_scp: str | None, device: str) -> tuple[dict, float]:
    """nnet3-compute --use-priors over the data dir: features as the model's conf/ and cmvn_opts say (per-speaker
    CMVN), log-posteriors minus log priors; and the seconds the network took."""
    import numpy as np
    import torch

    from ..features import FeatureConfig, FeatureExtractor, apply_cmvn, cmvn_stats, iter_audio, parse_cmvn_opts
    from ..nnet.infer import padded
    from ..nnet.modeldir import ModelDir
    from ..tables import read_matrices

    md = ModelDir(model_dir)
    model, blob = md.load()
    if blob["kind"] != "frame" or blob.get("priors") is None:
        raise BabelflowError(f"{model_dir}: not a frame task model with priors (run `babelflow priors`)")
    if feats_scp:
        feats = {k: np.asarray(m, np.float32) for k, m in read_matrices(f"scp:{feats_scp}") if k in utt2spk}
    else:
        conf = md.conf_files
        if not conf:
            raise BabelflowError(f"{model_dir}: no conf/<type>.conf to compute features with (or give --feats-scp)")
        feat_type = blob.get("feat_type") or conf[0].stem
        extract = FeatureExtractor(FeatureConfig.build(feat_type, conf[0], origin=str(conf[0])))
        feats = {k: extract(x, rate, k) for k, rate, x in iter_audio(f"scp:{wav}", segments) if k in utt2spk}
    missing = sorted(set(utt2spk) - set(feats))
    if missing:
        raise BabelflowError(f"no features for {len(missing)} utterance(s), e.g. '{missing[0]}'")
    means, variances = parse_cmvn_opts(blob["cmvn_opts"])
    if means:
        spk2utts: dict[str, list[str]] = {}
        for u, s in utt2spk.items():
            spk2utts.setdefault(s, []).append(u)
        for utts in spk2utts.values():
            stats = cmvn_stats(feats[u] for u in utts)
            for u in utts:
                feats[u] = apply_cmvn(feats[u], stats, means, variances)
    t0, out = time.perf_counter(), {}
    model.to(device)
    log_prior = np.log(blob["priors"].numpy())
    lc, rc = model.left_context, model.right_context
    with torch.no_grad():
        for k, f in feats.items():
            if f.shape[1] != blob["input_dim"]:
                raise BabelflowError(f"utterance '{k}': feature dim {f.shape[1]}, the model expects "
                                     f"{blob['input_dim']}")
            x = torch.from_numpy(padded(f, lc, rc)).to(device)
            parts = [model(x[s:s + lc + min(2000, f.shape[0] - s) + rc][None], 0)[0] for s in range(0, len(f), 2000)]
            out[k] = torch.cat(parts).float().cpu().numpy() - log_prior
    return out, time.perf_counter() - t0


# ----------------------------------------------------------------------------- decode dir
def decode_dir(graph_dir: str, model_dir: str, data_dir: str, out_dir: str, config: Any = None, nj: int = 4,
               workers: int = 0, feats_scp: str | None = None, loglikes: str | None = None,
               device: str | None = None, frame_shift: float = 0.01) -> dict:
    """decode.sh + score.sh: decode every utterance of ``data_dir`` and score against its ``text``. MODEL_DIR is
    a babelflow task model dir (model.pt), a GMM dir (final.mdl with an AmDiagGmm, conf/mfcc.conf, cmvn_opts),
    or, with ``loglikes`` (an rspecifier of nnet3-compute output), any dir with final.mdl / trans.mdl."""
    import tempfile

    from ..data.datadir import DataDir
    from ..data.split import split_data, split_keys_by_speaker
    from ..kaldi.transition_model import read_transition_model
    from ..tables import read_matrices
    from .decoder import DecodeConfig

    config = config or DecodeConfig()
    t_start, graph, md = time.perf_counter(), Path(graph_dir) / "HCLG.fst", Path(model_dir)
    words = read_words(Path(graph_dir) / "words.txt")
    data = DataDir.load(data_dir, check_audio=False)
    nj = min(nj, len(data.spk2utt))
    jobs = split_keys_by_speaker(data.utt2spk, nj)
    gmm = loglikes is None and not (md / "model.pt").is_file()
    mdl = next((md / n for n in ("trans.mdl", "final.mdl") if (md / n).is_file()), md)
    if gmm and not (md / "final.mdl").is_file():
        raise BabelflowError(f"{md}: neither a task model dir (model.pt) nor a GMM dir (final.mdl)")
    tm = read_transition_model(mdl)
    nnet_seconds, mats = 0.0, {}
    if loglikes:
        mats = {k: m for k, m in read_matrices(loglikes) if k in data.utt2spk}
        if len(mats) < len(data.utt2spk):
            log.warning("%s: no log-likelihoods for %d of %d utterances", loglikes, len(data.utt2spk) - len(mats),
                        len(data.utt2spk))
    elif not gmm:
        segments = str(data.path / "segments") if data.segments is not None else None
        mats, nnet_seconds = _nnet_loglikes(str(md), str(data.path / "wav.scp"), segments, data.utt2spk,
                                            feats_scp, device or ("cuda" if _has_cuda() else "cpu"))
    n_workers = min(nj, workers if workers > 0 else len(os.sched_getaffinity(0)))
    init = (str(graph), tm, config, str(md) if gmm else None)
    with tempfile.TemporaryDirectory(prefix="babelflow-decode-") as tmp:
        splits = split_data(data, nj, tmp) if gmm else [None] * nj
        args = [{"split_dir": str(s)} if gmm else {"items": [(k, mats[k]) for k in utts if k in mats]}
                for s, utts in zip(splits, jobs)]
        if n_workers <= 1:
            _init_worker(*init)
            outs = [_run_job(**a) for a in args]
        else:
            env = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
            with environment(env), ProcessPoolExecutor(n_workers, mp_context=get_context("spawn"),  # BLAS reads
                                                       initializer=_init_worker, initargs=init) as pool:  # env then
                outs = [f.result() for f in [pool.submit(_run_job, **a) for a in args]]
    metrics = _write_decode_dir(Path(out_dir), outs, words, data, config)
    frames = sum(r.num_frames for o in outs for r in o["results"])
    audio = max(frames * frame_shift, 1e-9)
    metrics.update(nj=nj, workers=n_workers, num_frames=frames, audio_seconds=round(audio, 3),
                   wall_seconds=round(time.perf_counter() - t_start, 3),
                   rtf=(time.perf_counter() - t_start) / audio, rtf_nnet=nnet_seconds / audio,
                   rtf_decode_per_core=sum(o["seconds"] for o in outs) / audio,
                   model="gmm" if gmm else "loglikes" if loglikes else "nnet")
    from ..io import write_text

    write_text(Path(out_dir) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _write_decode_dir(d: Path, outs: list[dict], words: dict[int, str], data: Any, config: Any) -> dict:
    from ..io import atomic_open, write_text
    from .score import format_lattice

    def text(ids: list[int]) -> str:
        return "".join(f"{words.get(w, str(w))} " for w in ids)

    write_text(d / "num_jobs", f"{len(outs)}\n")
    c = config
    for job, o in enumerate(outs, 1):
        lines = [f"# babelflow decode: --acoustic-scale={c.acoustic_scale} --beam={c.beam} --lattice-beam="
                 f"{c.lattice_beam} " + (f"--max-active={c.max_active}" if not (c.lmwts and c.wips) else
                                          "(LatticeSimpleDecoder: no max-active)")]
        for r in o["results"]:
            b, n = r.best, r.num_frames
            lines += [f"{r.key} {text(b.words)}",
                      f"LOG For utterance {r.key}, best cost {b.graph_cost:.6g} + {b.acoustic_cost:.6g} = "
                      f"{b.graph_cost + b.acoustic_cost:.6g} over {n} frames.",
                      f"LOG Log-like per frame for utterance {r.key} is {-(b.graph_cost + b.acoustic_cost) / n:.6g} "
                      f"over {n} frames."]
        lines += [f"WARNING Did not successfully decode utterance {k}, len = {n}" for k, n in o["failed"]]
        lines.append(f"LOG Done {len(o['results'])} utterances, failed for {len(o['failed'])}")
        write_text(d / "log" / f"decode.{job}.log", "\n".join(lines) + "\n")
        with atomic_open(d / f"lat.{job}.gz", "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as z:
            z.write("".join(format_lattice(r.key, r.lattice) for r in o["results"] if r.lattice).encode())
    results = [r for o in outs for r in o["results"]]
    metrics = {"num_utts": len(data.utt2spk), "num_decoded": len(results),
               "num_failed": sum(len(o["failed"]) for o in outs)}
    if data.text is None or not c.lmwts or not c.wips:
        if data.text is None:
            log.warning("%s has no text: not scoring", data.path)
        return metrics
    sweep = {combo: {r.key: [words.get(w, str(w)) for w in r.sweep[combo].words] for r in results
                     if combo in r.sweep} for combo in [(lm, w) for w in c.wips for lm in c.lmwts]}
    for (lm, wip), _ in sweep.items():
        costs = [(r.key, r.sweep[(lm, wip)], r.num_frames) for r in results if (lm, wip) in r.sweep]
        write_text(d / "scoring_kaldi" / f"penalty_{wip}" / "log" / f"best_path.{lm}.log", "".join(
            f"LOG For utterance {k}, best cost {h.graph_cost:.6g} + {h.acoustic_cost:.6g} = "
            f"{h.graph_cost + h.acoustic_cost:.6g} over {n} frames.\n" for k, h, n in costs))
    return {**metrics, **_score(d, data, sweep)}


def _score(d: Path, data: Any, hyps: dict) -> dict:
    from .score import score_dir

    ref = {u: data.text[u].split() for u in data.utt2spk if u in data.text}
    best = score_dir(d, ref, hyps, data.utt2spk)
    st = best["stats"]
    return {"wer": round(st.wer, 4), "ser": round(st.ser, 4), "lmwt": best["lmwt"], "wip": best["wip"],
            "best_wer": best["best_wer"], "words": st.words, "errors": st.errors, "ins": st.ins, "del": st.dels,
            "sub": st.subs}


def score_decode_dir(data_dir: str, graph_dir: str, decode: str, lmwts: tuple[int, ...], wips: tuple[str, ...]
                     ) -> dict:
    """score.sh on an existing decode dir: its lat.*.gz rescored per (LMWT, WIP), or, without lattices, the
    hypotheses of an earlier scoring rescored against the data dir's text."""
    from ..data.datadir import DataDir
    from .lattice import best_paths
    from .score import read_lattices, read_scored_hyps

    data = DataDir.load(data_dir, check_audio=False)
    if data.text is None:
        raise BabelflowError(f"{data_dir}: no text to score against")
    lats = read_lattices(decode)
    if lats:
        words = read_words(Path(graph_dir) / "words.txt")
        paths = {k: best_paths(lat, lmwts, wips) for k, lat in lats.items()}
        hyps = {(lm, w): {k: [words.get(i, str(i)) for i in p[(lm, w)].words] for k, p in paths.items()
                          if (lm, w) in p} for w in wips for lm in lmwts}
    else:
        hyps = read_scored_hyps(decode)
        if not hyps:
            raise BabelflowError(f"{decode}: no lat.*.gz and no scoring_kaldi/penalty_*/*.txt to score")
    return _score(Path(decode), data, hyps)


# ----------------------------------------------------------------------------- CLI
def _sweep_args(p: argparse.ArgumentParser) -> None:
    from .options import DecodeOptions

    DecodeOptions.add_arguments(p)


def _sweep(args: argparse.Namespace) -> tuple[tuple[int, ...], tuple[str, ...]]:
    if args.min_lmwt < 1 or args.max_lmwt < args.min_lmwt:
        raise BabelflowError(f"bad LM weight range {args.min_lmwt}..{args.max_lmwt}")
    return tuple(range(args.min_lmwt, args.max_lmwt + 1)), tuple(str(w) for w in args.word_ins_penalty)


def cmd_decode(args: argparse.Namespace) -> None:
    from .decoder import DecodeConfig

    lmwts, wips = ((), ()) if args.skip_scoring else _sweep(args)
    cfg = DecodeConfig(args.acoustic_scale, args.beam, args.lattice_beam, args.max_active, args.min_active,
                       args.allow_partial, lmwts, wips)
    m = decode_dir(args.graph_dir, args.model_dir, args.data_dir, args.decode_dir, cfg, args.nj, args.workers,
                   args.feats_scp, args.loglikes, args.device)
    log.info("decode %s: %d/%d utterances, %s; RTF %.3f", args.decode_dir, m["num_decoded"], m["num_utts"],
             m.get("best_wer", "not scored"), m["rtf"])


def cmd_score(args: argparse.Namespace) -> None:
    m = score_decode_dir(args.data_dir, args.graph_dir, args.decode_dir, *_sweep(args))
    print(m["best_wer"])


def cmd_compute_wer(args: argparse.Namespace) -> None:
    from .score import compute_wer, read_text, write_stats

    lines: list[str] | None = [] if args.stats_out else None
    st = compute_wer(read_text(args.ref, not args.text), read_text(args.hyp, not args.text), args.mode, lines)
    print(st.format(), end="")
    if args.stats_out:
        write_stats(args.stats_out, lines or [])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode a data dir with an HCLG and score it (nnet3/decode.sh + score.sh)")
    p.add_argument("--nj", type=int, default=4, help="jobs (the data dir is split by speaker)")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: one per job up to the CPUs)")
    p.add_argument("--allow-partial", action="store_true", help="output utterances that reach no final state")
    p.add_argument("--skip-scoring", action="store_true", help="best paths only: no lattices, sweep or scoring")
    _sweep_args(p)
    p.add_argument("--feats-scp", help="nnet: existing features (feats.scp) instead of computing them")
    p.add_argument("--loglikes", metavar="RSPECIFIER", help="decode these log-likelihoods (nnet3-compute output)")
    p.add_argument("--device", help="network device (default: cuda when available, else cpu)")
    for a in ("graph_dir", "model_dir", "data_dir", "decode_dir"):
        p.add_argument(a, metavar=a.upper())
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("decode-metrics", help="collect decode dirs' WER into one metrics.json (+ .tsv)")
    p.add_argument("--plot", metavar="PNG", help="bars of WER per task, one per system")
    p.add_argument("out", metavar="METRICS_JSON")
    p.add_argument("results", nargs="+", metavar="TASK.KEY=DECODE_DIR")
    p.set_defaults(func=cmd_decode_metrics)

    p = sub.add_parser("score", help="score a decode dir against a data dir's text (local/score.sh)")
    _sweep_args(p)
    for a in ("data_dir", "graph_dir", "decode_dir"):
        p.add_argument(a, metavar=a.upper())
    p.set_defaults(func=cmd_score)


def cmd_decode_metrics(args: argparse.Namespace) -> None:
    """TASK.KEY=DECODE_DIR items -> {task: {key: wer}} (DVC metrics), a TSV of WER per system and task
    (DVC plots; ``wer`` is the network's, ``gmm_wer`` the GMM baseline's) and, with --plot, a PNG."""
    from .report import collect_wer, write_wer

    write_wer(args.out, collect_wer(args.results), args.plot)


def register_tools(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compute-wer", help="WER of hypotheses against references (compute-wer)")
    p.add_argument("--text", action="store_true", help="tokens are words, not integers")
    p.add_argument("--mode", default="strict", choices=("present", "all", "strict"))
    p.add_argument("ref", metavar="REF_RSPECIFIER")
    p.add_argument("hyp", metavar="HYP_RSPECIFIER")
    p.add_argument("stats_out", nargs="?", metavar="STATS_OUT")
    p.set_defaults(func=cmd_compute_wer)
