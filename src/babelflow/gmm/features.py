"""What a GMM run reads: features as Kaldi's GMM recipes make them (MFCC, per-speaker CMVN, then Δ+ΔΔ),
and the lang dir.

``train_mono.sh`` / ``align_si.sh`` read ``apply-cmvn --utt2spk ... | add-deltas``; here the
same chain is computed from the audio of one job's split data dir and kept in memory,
because a job's features are reused by every EM pass. Dither is forced to 0: Kaldi's
default (1.0) draws random noise, and the alignments must be reproducible. The settings
are written into the model dir (``conf/mfcc.conf``, ``cmvn_opts``, ``delta_opts``) so
that ``align`` recomputes exactly the features the model was trained on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BabelflowError
from ..features import FeatureConfig, FeatureExtractor, apply_cmvn, cmvn_stats, iter_audio, parse_cmvn_opts
from ..io import read_scalar, read_table, write_text
from ..kaldi.hmm_topology import HmmTopology, read_topology


@dataclass(frozen=True)
class GmmFeatureSpec:
    """What a GMM's features are: the MFCC options, apply-cmvn's options and add-deltas' order/window."""

    mfcc: FeatureConfig
    cmvn_opts: str = ""  # apply-cmvn defaults: normalise means only
    delta_order: int = 2
    delta_window: int = 2

    @classmethod
    def build(cls, mfcc_config: str | os.PathLike | None = None, cmvn_opts: str = "", delta_order: int = 2,
              delta_window: int = 2) -> GmmFeatureSpec:
        """Kaldi MFCC defaults < ``mfcc_config`` (a Kaldi conf file), with dither 0 always."""
        parse_cmvn_opts(cmvn_opts)  # fail early
        if delta_order < 0 or delta_window < 1:
            raise BabelflowError(f"deltas: need order >= 0 and window >= 1 (got {delta_order}, {delta_window})")
        return cls(FeatureConfig.build("mfcc", mfcc_config, {"dither": 0.0}, origin="gmm features"),
                   cmvn_opts, delta_order, delta_window)

    @property
    def dim(self) -> int:
        return self.mfcc.dim * (self.delta_order + 1)

    @property
    def frame_shift(self) -> float:
        """Seconds per frame (for the hours in ``info/``)."""
        return float(self.mfcc.options["frame_shift"]) / 1000.0

    @property
    def delta_opts(self) -> str:
        return f"--delta-order={self.delta_order} --delta-window={self.delta_window}"

    def write(self, model_dir: str | os.PathLike) -> None:
        """``conf/mfcc.conf``, ``cmvn_opts`` and ``delta_opts`` as a Kaldi GMM dir has them."""
        d = Path(model_dir)
        write_text(d / "conf" / "mfcc.conf", self.mfcc.to_conf())
        write_text(d / "cmvn_opts", f"{self.cmvn_opts}\n")
        write_text(d / "delta_opts", f"{self.delta_opts}\n")

    @classmethod
    def read(cls, model_dir: str | os.PathLike) -> GmmFeatureSpec:
        d = Path(model_dir)
        if not (d / "conf" / "mfcc.conf").is_file():
            raise BabelflowError(f"{d}: no conf/mfcc.conf (not a model dir written by babelflow train-gmm?)")
        opts = dict(tok.lstrip("-").split("=", 1) for tok in read_scalar(d / "delta_opts").split())
        try:
            order, window = int(opts.get("delta-order", 2)), int(opts.get("delta-window", 2))
        except ValueError:
            raise BabelflowError(f"{d / 'delta_opts'}: expected --delta-order=N --delta-window=N") from None
        return cls.build(d / "conf" / "mfcc.conf", read_scalar(d / "cmvn_opts"), order, window)


def add_deltas(feats: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """Kaldi add-deltas (edge frames replicated), in kaldi-native-fbank."""
    if order == 0:
        return feats
    import kaldi_native_fbank as knf

    return knf.compute_deltas(knf.DeltaOptions(order=order, window=window), np.ascontiguousarray(feats, np.float32))


def job_features(spec: GmmFeatureSpec, split_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Features of one split data dir (``wav.scp``, optional ``segments``, ``utt2spk``), keyed by utterance.

    CMVN statistics are per speaker over this dir's utterances, which is every utterance
    of the speaker because jobs are split by speaker.
    """
    split_dir = Path(split_dir)
    segments = split_dir / "segments"
    extract = FeatureExtractor(spec.mfcc)
    raw = {key: extract(samples, rate, key) for key, rate, samples in
           iter_audio(f"scp:{split_dir / 'wav.scp'}", str(segments) if segments.exists() else None)}
    utt2spk = {k: v[0] for _, k, v in read_table(split_dir / "utt2spk", 2, 2)}
    missing = sorted(set(utt2spk) - set(raw))
    if missing:
        raise BabelflowError(f"{split_dir}: no audio for {len(missing)} utterance(s), e.g. '{missing[0]}'")
    norm_means, norm_vars = parse_cmvn_opts(spec.cmvn_opts)
    spk2utts: dict[str, list[str]] = {}
    for utt in sorted(utt2spk):
        spk2utts.setdefault(utt2spk[utt], []).append(utt)
    out = {}
    for utts in spk2utts.values():
        stats = cmvn_stats(raw[u] for u in utts)
        for u in utts:
            out[u] = add_deltas(apply_cmvn(raw[u], stats, norm_means, norm_vars), spec.delta_order, spec.delta_window)
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- lang dir


@dataclass(frozen=True)
class LangInfo:
    """What GMM training reads from a Kaldi lang dir (prepare_lang.sh output)."""

    path: Path
    phones: dict[str, int]
    words: dict[str, int]
    topology: HmmTopology
    disambig: tuple[int, ...]
    oov: int
    optional_silence: tuple[int, ...]

    @property
    def lexicon_fst(self) -> Path:
        return self.path / "L.fst"


def read_lang(lang_dir: str | os.PathLike) -> LangInfo:
    """The lang dir's symbol tables, topology, disambiguation symbols, OOV and optional silence (via LangDir)."""
    from .lang import LangDir

    d = LangDir(lang_dir)
    if not (d.path / "L.fst").is_file():
        raise BabelflowError(f"{d.path}: not a lang dir (no L.fst)")
    sil = (d.optional_silence,) if (d.path / "phones" / "optional_silence.int").is_file() else ()
    return LangInfo(d.path, d.phones, d.words, read_topology(d.topo_path), tuple(d.disambig_phones), d.oov, sil)
