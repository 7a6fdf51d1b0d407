"""Kaldi-named tools: ``babelflow kaldi <tool>`` (and ``babelflow <tool>``, kept as aliases).

Each keeps the argument order and flags of the Kaldi binary it stands for, so a line of a
Kaldi script reads the same with ``babelflow kaldi`` in front.
"""

from __future__ import annotations

import argparse
import logging

from .errors import BabelflowError
from .features import OPTIONS, FeatureConfig, add_kaldi_feature_flags, kaldi_feature_flags
from .options import parse_bool

log = logging.getLogger("babelflow")


def _feature_config(args: argparse.Namespace, feat_type: str) -> FeatureConfig:
    return FeatureConfig.build(feat_type, args.config, kaldi_feature_flags(args), origin="command line")


def cmd_compute_feats(args: argparse.Namespace) -> None:
    from .make_feats import compute_feats

    n = compute_feats(_feature_config(args, args.type), args.wav_rspecifier, args.feats_wspecifier,
                      segments=args.segments)
    log.info("computed features for %d utterances", n)


def cmd_compute_cmvn_stats(args: argparse.Namespace) -> None:
    from .data.datadir import read_spk2utt
    from .features import cmvn_stats
    from .tables import open_matrix_writer, read_matrices

    feats = dict(read_matrices(args.feats_rspecifier))
    with open_matrix_writer(args.stats_wspecifier) as w:
        if args.spk2utt:
            for spk, utts in read_spk2utt(args.spk2utt).items():
                absent = [u for u in utts if u not in feats]
                if absent:
                    raise BabelflowError(f"{args.spk2utt}: speaker '{spk}': no features for '{absent[0]}'")
                w[spk] = cmvn_stats(feats[u] for u in utts)
        else:
            for key, m in feats.items():
                w[key] = cmvn_stats([m])


def cmd_apply_cmvn(args: argparse.Namespace) -> None:
    from .data.datadir import read_utt2spk
    from .features import apply_cmvn, parse_cmvn_opts
    from .tables import open_matrix_writer, read_matrices

    parse_cmvn_opts(f"--norm-means={args.norm_means} --norm-vars={args.norm_vars}")  # Kaldi's combination rule
    stats = dict(read_matrices(args.cmvn_rspecifier))
    utt2spk = read_utt2spk(args.utt2spk) if args.utt2spk else {}
    with open_matrix_writer(args.feats_wspecifier) as w:
        for key, m in read_matrices(args.feats_rspecifier):
            skey = utt2spk.get(key, key)
            if skey not in stats:
                raise BabelflowError(f"{args.cmvn_rspecifier}: no CMVN stats for '{skey}' (utterance '{key}')")
            w[key] = apply_cmvn(m, stats[skey], args.norm_means, args.norm_vars)


def cmd_ali_to_pdf(args: argparse.Namespace) -> None:
    from .kaldi.alignments import ali_to_pdf

    n = ali_to_pdf(args.model, args.ali_rspecifier, args.pdf_wspecifier)
    log.info("ali-to-pdf: converted %d alignments", n)


def register(sub: argparse._SubParsersAction, alias: bool = False) -> None:
    """Add the tools to ``sub``; ``alias``: as the top-level names of earlier versions."""
    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=f"alias of `babelflow kaldi {name}`" if alias else help)

    s = add("compute-feats", "compute-fbank-feats / compute-mfcc-feats")
    s.add_argument("type", choices=sorted(OPTIONS))
    s.add_argument("--segments", help="segments file (extract-segments)")
    add_kaldi_feature_flags(s)
    s.add_argument("wav_rspecifier")
    s.add_argument("feats_wspecifier")
    s.set_defaults(func=cmd_compute_feats)

    s = add("compute-cmvn-stats", "compute-cmvn-stats [--spk2utt=ark:spk2utt]")
    s.add_argument("--spk2utt")
    s.add_argument("feats_rspecifier")
    s.add_argument("stats_wspecifier")
    s.set_defaults(func=cmd_compute_cmvn_stats)

    s = add("apply-cmvn", "apply-cmvn [--norm-means] [--norm-vars] [--utt2spk]")
    s.add_argument("--norm-means", type=parse_bool, default=True)
    s.add_argument("--norm-vars", type=parse_bool, default=False)
    s.add_argument("--utt2spk")
    s.add_argument("cmvn_rspecifier")
    s.add_argument("feats_rspecifier")
    s.add_argument("feats_wspecifier")
    s.set_defaults(func=cmd_apply_cmvn)

    s = add("ali-to-pdf", "ali-to-pdf MODEL ALI_RSPECIFIER PDF_WSPECIFIER")
    s.add_argument("model")
    s.add_argument("ali_rspecifier")
    s.add_argument("pdf_wspecifier")
    s.set_defaults(func=cmd_ali_to_pdf)
