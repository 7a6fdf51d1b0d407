"""Kaldi-exact fbank / MFCC (kaldi-native-fbank) and CMVN, with Kaldi's option names.

Options keep the names of ``compute-fbank-feats`` / ``compute-mfcc-feats`` (dashes or
underscores), so a Kaldi ``conf/*.conf`` file works unchanged. Samples are fed on the
int16 scale, as Kaldi reads wav files, so the numbers equal Kaldi's (dither 0) rather
than differing by a log(32768) offset. Features are computed by ``fbank.FastFeatures``
(whole utterances as numpy frame matrices, at Kaldi's speed); kaldi-native-fbank computes
the option sets that module does not implement (see ``FeatureExtractor``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kaldi_native_fbank as knf
import numpy as np

from .errors import BabelflowError, where
from .fbank import FastFeatures, unsupported
from .options import StepOptions, option

if TYPE_CHECKING:
    from .config import Pipeline

# Kaldi option -> (default, kaldi-native-fbank attribute path or None when handled here)
_FRAME = {
    "sample_frequency": (16000.0, "frame_opts.samp_freq"),
    "frame_shift": (10.0, "frame_opts.frame_shift_ms"),
    "frame_length": (25.0, "frame_opts.frame_length_ms"),
    "dither": (1.0, "frame_opts.dither"),
    "preemphasis_coefficient": (0.97, "frame_opts.preemph_coeff"),
    "remove_dc_offset": (True, "frame_opts.remove_dc_offset"),
    "window_type": ("povey", "frame_opts.window_type"),
    "round_to_power_of_two": (True, "frame_opts.round_to_power_of_two"),
    "blackman_coeff": (0.42, "frame_opts.blackman_coeff"),
    "snip_edges": (True, "frame_opts.snip_edges"),
    "num_mel_bins": (23, "mel_opts.num_bins"),
    "low_freq": (20.0, "mel_opts.low_freq"),
    "high_freq": (0.0, "mel_opts.high_freq"),
    "vtln_low": (100.0, "mel_opts.vtln_low"),
    "vtln_high": (-500.0, "mel_opts.vtln_high"),
    "debug_mel": (False, "mel_opts.debug_mel"),
    "energy_floor": (0.0, "energy_floor"),
    "raw_energy": (True, "raw_energy"),
    "htk_compat": (False, "htk_compat"),
    # handled by babelflow (Kaldi semantics) rather than the extractor
    "allow_downsample": (False, None),
    "allow_upsample": (False, None),
    "channel": (-1, None),
    "subtract_mean": (False, None),
    "vtln_warp": (1.0, None),
    "min_duration": (0.0, None),
}
OPTIONS = {
    "fbank": {**_FRAME, "use_energy": (False, "use_energy"), "use_log_fbank": (True, "use_log_fbank"),
              "use_power": (True, "use_power")},
    "mfcc": {**_FRAME, "use_energy": (True, "use_energy"), "num_ceps": (13, "num_ceps"),
             "cepstral_lifter": (22.0, "cepstral_lifter")},
}
ALIASES = {"frame_shift_ms": "frame_shift", "frame_length_ms": "frame_length", "samp_freq": "sample_frequency",
           "preemph_coeff": "preemphasis_coefficient", "num_bins": "num_mel_bins"}


def canonical_option(name: str) -> str:
    name = name.lstrip("-").replace("-", "_")
    return ALIASES.get(name, name)


def _coerce(value: Any, default: Any, name: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        s = str(value).strip().lower()
        if s in ("true", "t", "1"):
            return True
        if s in ("false", "f", "0"):
            return False
        raise ValueError(f"option '{name}' expects true/false, got '{value}'")
    try:
        return type(default)(value) if not isinstance(default, int) else int(str(value))
    except ValueError:
        raise ValueError(f"option '{name}' expects a {type(default).__name__}, got '{value}'") from None


def read_kaldi_conf(path: str | os.PathLike) -> dict[str, str]:
    """Parse a Kaldi ``--option=value`` config file (``#`` comments allowed)."""
    path = Path(path)
    if not path.is_file():
        raise BabelflowError(f"{path}: feature config file not found")
    opts: dict[str, str] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not line.startswith("--") or "=" not in line:
            raise BabelflowError(f"{where(path, n)}: expected '--option=value', got '{raw.strip()}'")
        key, _, value = line[2:].partition("=")
        if canonical_option(key) == "config":
            opts.update(read_kaldi_conf(path.parent / value if not Path(value).is_absolute() else value))
            continue
        opts[canonical_option(key)] = value.strip()
    return opts


@dataclass(frozen=True)
class FeatureConfig:
    """A feature type and its complete, validated option set (every Kaldi default filled in)."""

    feat_type: str
    options: dict[str, Any]

    @classmethod
    def build(cls, feat_type: str, config_file: str | os.PathLike | None = None,
              overrides: dict[str, Any] | None = None, origin: str = "features") -> FeatureConfig:
        """Defaults < config file < overrides; unknown options are errors naming where they came from."""
        if feat_type not in OPTIONS:
            raise BabelflowError(f"{origin}: unknown feature type '{feat_type}' (use fbank or mfcc)")
        table = OPTIONS[feat_type]
        opts = {k: d for k, (d, _) in table.items()}
        sources = [(str(config_file), read_kaldi_conf(config_file))] if config_file else []
        sources.append((origin, {canonical_option(k): v for k, v in (overrides or {}).items()}))
        for src, given in sources:
            for key, value in given.items():
                if key not in table:
                    raise BabelflowError(f"{src}: unknown {feat_type} option '{key}' "
                                         f"(known: {', '.join(sorted(table))})")
                try:
                    opts[key] = _coerce(value, table[key][0], key)
                except ValueError as e:
                    raise BabelflowError(f"{src}: {e}") from None
        if opts["vtln_warp"] != 1.0:
            raise BabelflowError(f"{origin}: vtln_warp != 1.0 is not supported")
        return cls(feat_type, opts)

    @property
    def dim(self) -> int:
        o = self.options
        if self.feat_type == "mfcc":
            return o["num_ceps"]
        return o["num_mel_bins"] + (1 if o["use_energy"] else 0)

    @property
    def sample_frequency(self) -> float:
        return float(self.options["sample_frequency"])

    def to_conf(self) -> str:
        """Kaldi conf text (``--opt=value`` per line) that reproduces this config."""
        lines = []
        for k, v in self.options.items():
            v = str(v).lower() if isinstance(v, bool) else v
            lines.append(f"--{k.replace('_', '-')}={v}")
        return "\n".join(lines) + "\n"

    def knf_options(self):
        """kaldi-native-fbank options object with every field set explicitly."""
        o = knf.FbankOptions() if self.feat_type == "fbank" else knf.MfccOptions()
        for key, (_, attr) in OPTIONS[self.feat_type].items():
            if attr is None:
                continue
            target = o
            *parents, leaf = attr.split(".")
            for p in parents:
                target = getattr(target, p)
            setattr(target, leaf, self.options[key])
        return o


@dataclass
class FeaturesOptions(StepOptions):
    """``params.yaml`` ``features:`` -> ``babelflow features`` (make_fbank.sh / make_mfcc.sh)."""

    SECTION = "features"
    type: str = option("fbank", choices=("fbank", "mfcc"))
    config: str | None = option(None, help="a Kaldi conf file (--opt=value lines)")
    options: dict[str, Any] = option(default_factory=dict, help="Kaldi option names, override the conf file")
    cmvn_opts: str = option("--norm-means=false --norm-vars=false", help="as Kaldi's cmvn_opts file")
    existing: dict[str, str] = option(default_factory=dict, cli=False,
                                      help="data set -> a Kaldi dir with the features Kaldi made for it "
                                           "(feats.scp + cmvn.scp): adopted, not recomputed")

    def feature_config(self, origin: str = "params.yaml: features.options") -> FeatureConfig:
        """The complete option set: Kaldi defaults < ``config`` < ``options``."""
        return FeatureConfig.build(self.type, self.config, self.options, origin=origin)

    def to_args(self, only: tuple[str, ...] | None = None, exclude: tuple[str, ...] = ()) -> list[str]:
        """Kaldi's own flags for ``options`` (``--num-mel-bins=40``), so a command line reads like Kaldi's."""
        args = super().to_args(only, tuple(exclude) + ("options",))
        if only is None or "options" in only:
            for k, v in sorted(self.options.items()):
                v = str(v).lower() if isinstance(v, bool) else v
                args.append(f"--{canonical_option(k).replace('_', '-')}={v}")
        return args

    @classmethod
    def add_arguments(cls, parser) -> None:
        parser.add_argument("--type", choices=sorted(OPTIONS), default=cls.type)
        parser.add_argument("--cmvn-opts", dest="cmvn_opts", default=cls.cmvn_opts)
        add_kaldi_feature_flags(parser)

    @classmethod
    def from_args(cls, args) -> FeaturesOptions:
        return cls(args.type, args.config, kaldi_feature_flags(args), args.cmvn_opts)


def kaldi_feature_flags(args) -> dict[str, Any]:
    """The Kaldi options given on the command line (``add_kaldi_feature_flags``), by canonical name."""
    return {canonical_option(k[4:]): v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def add_kaldi_feature_flags(parser) -> None:
    """Kaldi's ``--config`` and ``--opt=value`` flags of compute-{fbank,mfcc}-feats."""
    parser.add_argument("--config", help="Kaldi conf file with --option=value lines")
    group = parser.add_argument_group("Kaldi feature options (override --config)")
    for name in sorted(set(OPTIONS["fbank"]) | set(OPTIONS["mfcc"])):
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar="V")


class FeatureExtractor:
    """Computes features for whole utterances given as int16-scale sample arrays.

    The work is done by ``fbank.FastFeatures`` (numpy over all frames of an utterance: 3 (2 s
    utterances) to 5 (1 min) times faster than kaldi-native-fbank driven from Python, which computes
    frame by frame; bench/features.py). That module
    implements Kaldi's computation for VTLN warp 1 and the window types Kaldi has;
    kaldi-native-fbank stays for everything else (``fallback`` says why): VTLN warping (which
    ``FeatureConfig.build`` rejects today), ``debug_mel``, and option values Kaldi rejects, so that
    they fail with kaldi-native-fbank's own error as before. ``use_knf=True`` forces it (tests,
    benchmarks).
    """

    def __init__(self, config: FeatureConfig, use_knf: bool = False):
        self.config = config
        o = config.options
        self.fallback = "use_knf=True" if use_knf else unsupported(config.feat_type, o)
        self._fast = None if self.fallback else FastFeatures(config.feat_type, o)
        self._opts = config.knf_options()
        self._cls = knf.OnlineFbank if config.feat_type == "fbank" else knf.OnlineMfcc
        self._min_samples = int(o["min_duration"] * o["sample_frequency"])

    def __call__(self, samples: np.ndarray, rate: float, key: str = "?") -> np.ndarray:
        o = self.config.options
        samples = self._select_channel(samples, key)
        if rate != o["sample_frequency"]:
            samples = self._resample(samples, rate, key)
        if len(samples) < max(self._min_samples, 1):
            raise BabelflowError(f"utterance '{key}': too short ({len(samples)} samples) for feature extraction")
        feats = self._fast(samples, seed=key) if self._fast else self._knf(samples)
        if len(feats) == 0:
            raise BabelflowError(f"utterance '{key}': shorter than one frame ({len(samples)} samples)")
        if o["subtract_mean"]:
            feats -= feats.mean(axis=0, keepdims=True)
        return feats

    def _knf(self, samples: np.ndarray) -> np.ndarray:
        comp = self._cls(self._opts)
        comp.accept_waveform(self.config.options["sample_frequency"], samples.astype(np.float32, copy=False))
        comp.input_finished()
        feats = np.empty((comp.num_frames_ready, self.config.dim), dtype=np.float32)
        for i in range(len(feats)):
            feats[i] = comp.get_frame(i)
        return feats

    def _select_channel(self, samples: np.ndarray, key: str) -> np.ndarray:
        if samples.ndim == 1:
            return samples
        ch = self.config.options["channel"]
        if ch == -1:
            if samples.shape[1] != 1:
                raise BabelflowError(f"utterance '{key}': {samples.shape[1]} channels;"
                                     " set --channel (as Kaldi requires)")
            ch = 0
        if not 0 <= ch < samples.shape[1]:
            raise BabelflowError(f"utterance '{key}': channel {ch} requested but audio has {samples.shape[1]}")
        return samples[:, ch]

    def _resample(self, samples: np.ndarray, rate: float, key: str) -> np.ndarray:
        o = self.config.options
        target = o["sample_frequency"]
        if (rate > target and not o["allow_downsample"]) or (rate < target and not o["allow_upsample"]):
            raise BabelflowError(
                f"utterance '{key}': sample rate {rate:g} Hz differs from --sample-frequency={target:g} "
                f"(set allow_downsample/allow_upsample to resample)")
        from scipy.signal import resample_poly  # slow import (0.7 s), rarely needed

        g = np.gcd(int(rate), int(target))
        return resample_poly(samples.astype(np.float32), int(target) // g, int(rate) // g)


# ---------------------------------------------------------------------------- CMVN

def parse_cmvn_opts(cmvn_opts: str) -> tuple[bool, bool]:
    """``--norm-means=true --norm-vars=false`` -> (norm_means, norm_vars), as apply-cmvn reads them."""
    means, variances = True, False  # apply-cmvn's defaults
    for tok in shlex.split(cmvn_opts or ""):
        key, _, value = tok.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if key not in ("norm_means", "norm_vars"):
            raise BabelflowError(f"cmvn_opts: unsupported option '{tok}' (use --norm-means / --norm-vars)")
        val = _coerce(value or "true", True, key)
        if key == "norm_means":
            means = val
        else:
            variances = val
    if variances and not means:
        raise BabelflowError("cmvn_opts: --norm-vars=true requires --norm-means=true (as in Kaldi)")
    return means, variances


def cmvn_stats(feats: Iterable[np.ndarray]) -> np.ndarray:
    """Kaldi CMVN stats: 2 x (dim+1) doubles [sum x, count; sum x^2, 0]."""
    stats = None
    for m in feats:
        m = np.asarray(m, dtype=np.float64)
        if stats is None:
            stats = np.zeros((2, m.shape[1] + 1))
        stats[0, :-1] += m.sum(axis=0)
        stats[1, :-1] += (m * m).sum(axis=0)
        stats[0, -1] += m.shape[0]
    if stats is None:
        raise BabelflowError("cmvn: no features to accumulate")
    return stats


def apply_cmvn(feats: np.ndarray, stats: np.ndarray, norm_means: bool = True, norm_vars: bool = False) -> np.ndarray:
    """Kaldi ``ApplyCmvn``: subtract the mean and optionally scale to unit variance."""
    if not norm_means:
        return feats
    dim = feats.shape[1]
    if stats.shape != (2, dim + 1):
        raise BabelflowError(f"cmvn: stats of shape {stats.shape} do not match feature dim {dim}")
    count = stats[0, dim]
    if count < 1.0:
        raise BabelflowError(f"cmvn: insufficient sample count {count}")
    mean = stats[0, :dim] / count
    if norm_vars:
        var = np.maximum(stats[1, :dim] / count - mean * mean, 1e-20)
        scale = 1.0 / np.sqrt(var)
    else:
        scale = np.ones(dim)
    offset = -mean * scale
    return (feats * scale + offset).astype(feats.dtype, copy=False)


def iter_audio(rspecifier: str, segments: str | None = None,
               skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(key, rate, int16-scale samples) from a wav.scp rspecifier: ``scp:wav.scp`` through babelflow's reader
    (pipes, arks, segments; errors name ``wav.scp:LINE``), anything else through kaldiio."""
    from .data.audio import iter_data_audio
    from .tables import read_matrices

    kind, _, path = rspecifier.partition(":")
    if set(kind.split(",")) <= {"scp", "p", "o", "s", "cs"} and "scp" in kind.split(","):
        yield from iter_data_audio(path, segments, skipped=skipped)
        return
    for key, value in read_matrices(rspecifier, segments=segments):
        if not (isinstance(value, tuple) and len(value) == 2):
            raise BabelflowError(f"'{rspecifier}': entry '{key}' is not audio")
        rate, samples = value
        yield key, rate, samples


def resolve(p: Pipeline, check_paths: bool) -> None:
    """The conf file exists, every option is one Kaldi knows, cmvn_opts are apply-cmvn's."""
    f = p.options(FeaturesOptions)
    if check_paths and f.config and not Path(f.config).is_file():
        raise p.error("features.config", f"file '{f.config}' not found")
    if check_paths or not f.config:
        f.feature_config(origin=f"{p.origin}: features.options")
    try:
        parse_cmvn_opts(f.cmvn_opts)
    except BabelflowError as e:
        raise BabelflowError(f"{p.origin}: features.{e}") from None
    for name, path in f.existing.items():
        if name not in p.datasets:
            raise p.error(f"features.existing.{name}", f"no data set '{name}' (data.dirs: {', '.join(p.datasets)})")
        for needed in ("feats.scp", "cmvn.scp"):
            if check_paths and not (Path(path) / needed).is_file():
                raise p.error(f"features.existing.{name}", f"'{path}' has no {needed} (Kaldi's make_*.sh + "
                              "compute_cmvn_stats.sh output)")
