"""Kaldi fbank / MFCC for whole utterances, vectorised with numpy (Kaldi's arithmetic, Kaldi's speed).

Kaldi (``compute-{fbank,mfcc}-feats``) and kaldi-native-fbank process one frame at a time in C++;
driven from Python, kaldi-native-fbank ran at 0.3x Kaldi's speed (issue 15). Here the frames of an
utterance are the rows of a matrix (blocks of ``BLOCK`` rows) and each of Kaldi's per-frame steps is
one numpy operation over all rows:

- framing: a strided view of the samples (``FirstSampleOfFrame``/``NumFrames`` of
  ``feature-window.cc``; with ``snip_edges=false`` the edges are reflected as ``ExtractWindow`` does);
- ``ProcessWindow``: dither (Gaussian, ``dither`` on the int16 scale, per frame sample, only if
  dither != 0), DC offset removal (frame means from one cumulative sum of the samples), raw log
  energy (floored at float epsilon), pre-emphasis with Kaldi's first-sample rule (``x[0] -= c x[0]``),
  window (povey/hamming/hanning/sine/rectangular/blackman, computed in double, stored as float);
- zero padding to the (power-of-two) FFT size, real FFT (``numpy.fft.rfft``: faster here than
  ``scipy.fft`` in double; torch would add a 1 s import to every feature job);
- power (or magnitude) spectrum, ``MelBanks`` (weights in Kaldi's float arithmetic; FFT bins
  0..N/2-1 as Kaldi), log floored at float epsilon; MFCC: ``ComputeDctMatrix`` rows times the
  cepstral lifter, energy in place of c0, ``htk_compat`` order and sqrt(2) on c0.

The signal path is computed in double (Kaldi and kaldi-native-fbank use float), so the values are at
least as close to Kaldi's as kaldi-native-fbank's (tests/test_fast_fbank.py). ``unsupported`` names
the option values this module does not implement; ``FeatureExtractor`` then uses kaldi-native-fbank.

Dither noise differs from Kaldi's (which comes from the C library's ``rand()`` and so depends on
everything computed before in the process): it is Gaussian with the same scale, drawn from a numpy
generator seeded by the caller (the utterance key), so a result does not depend on the job split.
"""

from __future__ import annotations

import math
import zlib
from typing import Any

import numpy as np

FLOAT_EPS = float(np.finfo(np.float32).eps)  # std::numeric_limits<float>::epsilon()
WINDOWS = ("povey", "hamming", "hanning", "sine", "rectangular", "blackman")
BLOCK = 512  # frames per block: its intermediates stay in the CPU cache


def _f32(x: float) -> float:
    """A value as Kaldi's BaseFloat (float) option holds it."""
    return float(np.float32(x))


def frame_sizes(o: dict[str, Any]) -> tuple[int, int, int]:
    """(shift, length, padded length) in samples, as Kaldi's ``WindowShift``/``WindowSize``/``PaddedWindowSize``."""
    rate = _f32(o["sample_frequency"])
    shift = int(rate * 0.001 * _f32(o["frame_shift"]))
    length = int(rate * 0.001 * _f32(o["frame_length"]))
    padded = 1 << max(length - 1, 0).bit_length() if o["round_to_power_of_two"] else length
    return shift, length, padded


def num_frames(num_samples: int, shift: int, length: int, snip_edges: bool) -> int:
    """Kaldi's ``NumFrames(num_samples, opts, flush=true)``."""
    if snip_edges:
        return 0 if num_samples < length else 1 + (num_samples - length) // shift
    return (num_samples + shift // 2) // shift


def mel_scale(freq):
    """Kaldi's ``MelScale`` in float: 1127 logf(1 + f / 700) (logf rounded correctly, as glibc's is)."""
    f32 = np.float32
    arg = f32(1.0) + np.asarray(freq, dtype=f32) / f32(700.0)
    return f32(1127.0) * np.log(arg.astype(np.float64)).astype(f32)


def mel_banks(num_bins: int, rate: float, padded: int, low_freq: float, high_freq: float) -> np.ndarray:
    """Kaldi's ``MelBanks`` (vtln_warp 1, float arithmetic as Kaldi's) as a (padded/2 + 1, num_bins)
    matrix; the Nyquist row is zero (Kaldi leaves that FFT bin out)."""
    f32 = np.float32
    nyquist = 0.5 * rate
    high = high_freq if high_freq > 0.0 else nyquist + high_freq
    if num_bins < 3 or low_freq < 0.0 or low_freq >= nyquist or high <= 0.0 or high > nyquist or high <= low_freq:
        raise ValueError(f"bad mel options: {num_bins} bins, low-freq {low_freq}, high-freq {high} "
                         f"vs nyquist {nyquist}")
    mel_low, mel_high = mel_scale(low_freq), mel_scale(high)
    delta = (mel_high - mel_low) / f32(num_bins + 1)
    left = mel_low + np.arange(num_bins, dtype=f32) * delta
    center = mel_low + np.arange(1, num_bins + 1, dtype=f32) * delta
    right = mel_low + np.arange(2, num_bins + 2, dtype=f32) * delta
    mel = mel_scale(f32(rate) / f32(padded) * np.arange(padded // 2, dtype=f32))[:, None]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    w = np.where((mel > left) & (mel < right), np.where(mel <= center, up, down), f32(0))
    if not w.any(axis=0).all():
        raise ValueError("a mel bin is empty (num_mel_bins too large?)")
    out = np.zeros((padded // 2 + 1, num_bins))
    out[:-1] = w
    return out


def window_function(kind: str, length: int, blackman_coeff: float) -> np.ndarray:
    """Kaldi's ``FeatureWindowFunction`` (double arithmetic, stored as float)."""
    i = np.arange(length, dtype=np.float64)
    a = 2 * math.pi / (length - 1) if length > 1 else 0.0
    w = {"hanning": lambda: 0.5 - 0.5 * np.cos(a * i),
         "sine": lambda: np.sin(0.5 * a * i),
         "hamming": lambda: 0.54 - 0.46 * np.cos(a * i),
         "povey": lambda: (0.5 - 0.5 * np.cos(a * i)) ** 0.85,
         "rectangular": lambda: np.ones(length),
         "blackman": lambda: blackman_coeff - 0.5 * np.cos(a * i) + (0.5 - blackman_coeff) * np.cos(2 * a * i)}[kind]()
    return w.astype(np.float32).astype(np.float64)


def dct_matrix(num_ceps: int, num_bins: int) -> np.ndarray:
    """The first ``num_ceps`` rows of Kaldi's ``ComputeDctMatrix`` (num_bins x num_bins)."""
    k = np.arange(num_ceps)[:, None]
    n = np.arange(num_bins)[None, :]
    m = math.sqrt(2.0 / num_bins) * np.cos(math.pi / num_bins * (n + 0.5) * k)
    m[0] = math.sqrt(1.0 / num_bins)
    return m.astype(np.float32).astype(np.float64)


def lifter_coeffs(num_ceps: int, q: float) -> np.ndarray:
    """Kaldi's ``ComputeLifterCoeffs``: 1 + Q/2 sin(pi i / Q); ones when Q is 0."""
    if q == 0.0:
        return np.ones(num_ceps)
    return (1.0 + 0.5 * q * np.sin(math.pi * np.arange(num_ceps) / q)).astype(np.float32).astype(np.float64)


def unsupported(feat_type: str, o: dict[str, Any]) -> str | None:
    """Why this module cannot compute these options (kaldi-native-fbank must), or None.

    Besides VTLN warping and the mel debug print, any value Kaldi would reject lands here, so that
    the error is kaldi-native-fbank's, as before this module existed."""
    if o["vtln_warp"] != 1.0:
        return "vtln_warp != 1"
    if o["debug_mel"]:
        return "debug_mel"
    if o["window_type"] not in WINDOWS:
        return f"window_type '{o['window_type']}'"
    if not 0.0 <= o["preemphasis_coefficient"] <= 1.0:
        return "preemphasis_coefficient outside [0, 1]"
    shift, length, padded = frame_sizes(o)
    if shift <= 0 or length <= 1 or padded % 2:
        return f"frame shift {shift} / length {length} / padded {padded} samples"
    if feat_type == "mfcc" and not 0 < o["num_ceps"] <= o["num_mel_bins"]:
        return "num_ceps not in [1, num_mel_bins]"
    try:
        mel_banks(o["num_mel_bins"], _f32(o["sample_frequency"]), padded, o["low_freq"], o["high_freq"])
    except ValueError as e:
        return str(e)
    return None


def _exact_sums(dtype: np.dtype) -> bool:
    """Samples whose sums and sums of squares over any frame are exact in int64 (int16 and smaller)."""
    return dtype.kind in "iu" and dtype.itemsize <= 2


class FastFeatures:
    """Kaldi fbank or MFCC of whole utterances; ``unsupported(feat_type, options)`` must be None.

    Matrix products go through BLAS matrix-vector calls (one per mel bin or cepstrum, on one block of
    frames), never matrix-matrix: OpenBLAS runs those on several threads, which made the whole step
    3-4 times slower on a loaded 2-core machine (its spinning worker threads compete with the job)."""

    def __init__(self, feat_type: str, options: dict[str, Any]):
        reason = unsupported(feat_type, options)
        if reason:
            raise ValueError(f"not supported by the vectorised extractor: {reason}")
        o = self.o = options
        self.mfcc = feat_type == "mfcc"
        self.shift, self.length, self.padded = frame_sizes(o)
        mel = mel_banks(o["num_mel_bins"], _f32(o["sample_frequency"]), self.padded, o["low_freq"], o["high_freq"])
        nonzero = mel != 0
        first, last = nonzero.argmax(axis=0), len(mel) - nonzero[::-1].argmax(axis=0)
        self.bins = [(slice(a, b), np.ascontiguousarray(mel[a:b, j])) for j, (a, b) in enumerate(zip(first, last))]
        self.window = window_function(o["window_type"], self.length, _f32(o["blackman_coeff"]))
        self.preemph = _f32(o["preemphasis_coefficient"])
        self.dither = _f32(o["dither"])
        self.energy = o["use_energy"]
        self.log_energy_floor = math.log(_f32(o["energy_floor"])) if o["energy_floor"] > 0.0 else None
        nb = o["num_mel_bins"]
        if self.mfcc:
            lift = lifter_coeffs(o["num_ceps"], _f32(o["cepstral_lifter"]))
            self.dct = dct_matrix(o["num_ceps"], nb) * lift[:, None]
            self.dim = o["num_ceps"]
            self.mel_rows = slice(0, nb)
        else:
            self.dim = nb + (1 if self.energy else 0)
            self.mel_rows = slice(1, nb + 1) if self.energy and not o["htk_compat"] else slice(0, nb)

    def num_frames(self, num_samples: int) -> int:
        return num_frames(num_samples, self.shift, self.length, self.o["snip_edges"])

    def frames(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(num_frames, frame length) strided view of the samples, and the samples it views (edges
        reflected as Kaldi's ``ExtractWindow`` does when snip_edges=false: -1 -> 0, n -> n-1, repeated)."""
        n, shift, length = len(samples), self.shift, self.length
        count = self.num_frames(n)
        x, start = np.ascontiguousarray(samples), 0
        if not self.o["snip_edges"] and count:
            first = shift // 2 - length // 2
            left, right = max(0, -first), max(0, first + (count - 1) * shift + length - n)
            if left or right:
                idx = np.concatenate([np.arange(-left, 0), np.arange(n, n + right)]) % (2 * n)
                idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
                x = np.concatenate([x[idx[:left]], x, x[idx[left:]]])
            start = first + left
        step = x.strides[0]
        view = np.lib.stride_tricks.as_strided(x[start:], (count, length), (shift * step, step), writeable=False)
        return view, x[start:]

    def __call__(self, samples: np.ndarray, seed: int | str | None = None) -> np.ndarray:
        """Features (num_frames x dim, float32) of one utterance of int16-scale samples; ``seed`` seeds the
        dither noise (a string, e.g. the utterance key, through crc32)."""
        frames, x = self.frames(samples)
        count = len(frames)
        out = np.empty((count, self.dim), dtype=np.float32)
        if count == 0:
            return out
        if self.dither != 0.0:
            rng = np.random.default_rng(zlib.crc32(seed.encode()) if isinstance(seed, str) else seed)
            for b in range(0, count, BLOCK):
                out[b:b + BLOCK] = self._features(*self._dithered(frames[b:b + BLOCK], rng)).T
            return out
        # Without dither, DC removal commutes with pre-emphasis: for i >= 1 the frame's sample is
        # (x[i] - m) - c (x[i-1] - m) = y[i] - (1 - c) m with y = x[t] - c x[t-1] computed once over the
        # signal, and the frame means m (and raw energies) come from cumulative sums: no pass over the
        # frames before the window product.
        x = x[:(count - 1) * self.shift + self.length]
        exact = _exact_sums(x.dtype)
        s1 = self._frame_sums(x, np.int64 if exact else np.float64, count)
        means = s1 / self.length if self.o["remove_dc_offset"] else np.zeros(count)
        log_energy = None
        if self.energy and self.o["raw_energy"] and exact:
            s2 = self._frame_sums(np.square(x, dtype=np.int64), np.int64, count)
            energy = (self.length * s2 - s1 * s1) / self.length if self.o["remove_dc_offset"] else s2
            log_energy = np.log(np.maximum(energy.astype(np.float64), FLOAT_EPS))
        yframes = None
        if self.preemph != 0.0:
            y = np.empty(len(x))
            y[0] = 0.0
            np.multiply(x[:-1], -self.preemph, out=y[1:])
            y[1:] += x[1:]
            yframes = np.lib.stride_tricks.as_strided(y, frames.shape, (self.shift * 8, 8), writeable=False)
        for b in range(0, count, BLOCK):
            blk = slice(b, b + BLOCK)
            buf, le = self._windowed(frames[blk], None if yframes is None else yframes[blk], means[blk])
            out[blk] = self._features(buf, le if log_energy is None else log_energy[blk]).T
        return out

    def _frame_sums(self, x: np.ndarray, dtype, count: int) -> np.ndarray:
        cs = np.zeros(len(x) + 1, dtype=dtype)
        np.cumsum(x, dtype=dtype, out=cs[1:])
        return cs[self.length::self.shift][:count] - cs[:count * self.shift:self.shift]

    def _windowed(self, frames: np.ndarray, yframes: np.ndarray | None, means: np.ndarray):
        """Windowed frames, zero-padded to the FFT size (and the raw log energy where the sums could not
        give it exactly: float samples)."""
        c, length = self.preemph, self.length
        buf = np.zeros((len(frames), self.padded))
        p, m = buf[:, :length], means[:, None]
        log_energy = None
        if self.energy and self.o["raw_energy"] and not _exact_sums(frames.dtype):
            w = np.subtract(frames, m, dtype=np.float64)
            log_energy = np.log(np.maximum(np.einsum("ij,ij->i", w, w), FLOAT_EPS))
        if yframes is None:
            np.subtract(frames, m, out=p)
        else:
            np.subtract(yframes[:, 1:], (1.0 - c) * m, out=p[:, 1:])
            np.multiply(frames[:, 0] - means, 1.0 - c, out=p[:, 0])  # Kaldi: x[0] -= c x[0]
        p *= self.window
        return buf, log_energy

    def _dithered(self, frames: np.ndarray, rng):
        """Kaldi's ``ProcessWindow`` frame by frame (the noise differs per frame), zero-padded."""
        o, c = self.o, self.preemph
        w = frames.astype(np.float64)
        w += rng.standard_normal(w.shape) * self.dither
        if o["remove_dc_offset"]:
            w -= w.mean(axis=1, keepdims=True)
        log_energy = None
        if self.energy and o["raw_energy"]:
            log_energy = np.log(np.maximum(np.einsum("ij,ij->i", w, w), FLOAT_EPS))
        buf = np.zeros((len(w), self.padded))
        p = buf[:, :self.length]
        if c != 0.0:  # Kaldi: x[i] -= c x[i-1] from the end, then x[0] -= c x[0]
            np.multiply(w[:, :-1], -c, out=p[:, 1:])
            p[:, 1:] += w[:, 1:]
            np.multiply(w[:, 0], 1.0 - c, out=p[:, 0])
        else:
            p[...] = w
        p *= self.window
        return buf, log_energy

    def _features(self, buf: np.ndarray, log_energy: np.ndarray | None) -> np.ndarray:
        """Features of a block of windowed, padded frames, transposed (dim x frames)."""
        o = self.o
        if self.energy and not o["raw_energy"]:
            log_energy = np.log(np.maximum(np.einsum("ij,ij->i", buf, buf), FLOAT_EPS))
        spec = np.fft.rfft(buf)
        if self.mfcc or o["use_power"]:
            power = np.square(spec.real)
            power += np.square(spec.imag)
        else:
            power = np.abs(spec)
        feats = np.empty((len(self.bins) if self.mfcc else self.dim, len(buf)))
        mel = feats[self.mel_rows]
        for j, (cols, weights) in enumerate(self.bins):
            np.matmul(power[:, cols], weights, out=mel[j])
        if self.mfcc or o["use_log_fbank"]:
            np.maximum(mel, FLOAT_EPS, out=mel)
            np.log(mel, out=mel)
        if self.energy and self.log_energy_floor is not None:
            np.maximum(log_energy, self.log_energy_floor, out=log_energy)
        if self.mfcc:
            ceps = np.empty((self.dim, len(buf)))
            for i, row in enumerate(self.dct):
                np.matmul(row, mel, out=ceps[i])
            if self.energy:
                ceps[0] = log_energy
            if o["htk_compat"]:  # c0 (or the energy) goes last; c0 loses the sqrt(2) of Kaldi's DCT
                c0 = ceps[0] * (1.0 if self.energy else math.sqrt(2.0))
                ceps = np.concatenate([ceps[1:], c0[None]])
            return ceps
        if self.energy:
            feats[-1 if o["htk_compat"] else 0] = log_energy
        return feats
