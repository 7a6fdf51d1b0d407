"""Decoding with an HCLG (Kaldi's latgen-faster-mapped, gmm-latgen-faster) and score.sh's LM-weight sweep.

One search per utterance gives both what latgen logs and the lattice score.sh rescores:
kaldi-decoder's ``LatticeSimpleDecoder`` (Kaldi's defaults: acoustic scale 0.1, beam 15, lattice
beam 8) writes the raw state-level lattice; its shortest path is the best path (words,
transition-id alignment, graph + acoustic costs), as Kaldi's ``GetBestPath`` takes it from the
same raw lattice. score.sh rescales Kaldi's *determinized* lattice, in which each word sequence
keeps only its alignment that is best at the decoding scale. We do the same: prune at the lattice
beam, determinize on words in the lattice semiring (weights only), then one best path per (LMWT,
WIP) on the small word lattice, with the penalty added per word as lattice-add-penalty does.
Re-decoding at 1/LMWT instead would cost 33 decodes and search another space than Kaldi's.

That decoder has no max-active (Kaldi's 7000 binds only on graphs far larger than a demo's). Without
a sweep (``lmwts`` or ``wips`` empty) only the best path is wanted: kaldi-hmm-gmm's
``LatticeFasterDecoder`` then decodes with max-active, as latgen-faster does, and keeps no lattice.

HCLG's input labels are transition-ids, so a T x num_pdfs log-likelihood matrix is mapped to one
column per transition-id and scaled once (Kaldi's DecodableMatrixScaledMapped). GMM likelihoods
are computed in numpy for all pdfs (what DecodableAmDiagGmmScaled computes pdf by pdf), because
kaldi-decoder's lattice decoder cannot take khg's GMM decodable.
"""

from __future__ import annotations

import io
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BabelflowError
from ..kaldi.transition_model import TransitionModel
from .lattice import Hyp, WordLattice, best_paths, word_lattice
from .options import DecodeOptions

_D = DecodeOptions()  # the defaults live there (params.yaml decode:, the CLI flags)
KALDI_LMWTS = tuple(range(_D.min_lmwt, _D.max_lmwt + 1))  # score.sh --min-lmwt 7 --max-lmwt 17
KALDI_WIPS = tuple(str(w) for w in _D.word_ins_penalty)  # score.sh --word-ins-penalty


@dataclass(frozen=True)
class DecodeConfig:
    """nnet3-latgen-faster's defaults as nnet3/decode.sh runs them, and score.sh's sweep."""

    acoustic_scale: float = _D.acoustic_scale
    beam: float = _D.beam
    lattice_beam: float = _D.lattice_beam
    max_active: int = _D.max_active
    min_active: int = _D.min_active
    allow_partial: bool = False  # Kaldi's default: no output for an utterance that reaches no final state
    lmwts: tuple[int, ...] = KALDI_LMWTS
    wips: tuple[str, ...] = KALDI_WIPS
    max_det_states: int = 200_000  # beyond this, sweep on the pruned raw lattice (with a note)


@dataclass
class UttResult:
    key: str
    num_frames: int
    best: Hyp  # the decoder's best path at the decoding scale
    alignment: np.ndarray  # transition-ids, one per frame
    sweep: dict[tuple[int, str], Hyp] = field(default_factory=dict)  # (lmwt, wip) -> best path
    lattice: WordLattice | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------- model, graph, words
def khg_transition_model(tm: TransitionModel) -> Any:
    """A khg.TransitionModel equal to ``tm``, set through its pickle state (no tree needed, unlike khg's
    constructor): the decoder wrapper wants one, and a babelflow model dir need not have a tree."""
    from ..gmm.k2 import khg

    buf = io.BytesIO()
    tm.topology.write(buf, binary=False)
    topo = khg.HmmTopology()
    topo.read(buf.getvalue().decode())
    tuple_cls = sys.modules[khg.TransitionModel.__module__].TransitionModelTuple
    n_ids = [len(tm.topology.entry_for_phone(t[0])[t[1]].transitions) for t in tm.tuples]
    first = np.concatenate([[1], 1 + np.cumsum(n_ids)]).tolist()
    id2state = [0] + np.repeat(np.arange(1, len(n_ids) + 1), n_ids).tolist()
    loop_ids = np.flatnonzero(tm.transition_id_is_self_loop())
    non_loop = np.zeros(len(n_ids) + 1, dtype=np.float32)
    non_loop[np.asarray(id2state)[loop_ids]] = np.log1p(-np.exp(tm.log_probs[loop_ids].astype(np.float64)))
    id2pdf = tm.transition_id_to_pdf()
    id2pdf[0] = 0
    ktm = khg.TransitionModel.__new__(khg.TransitionModel)
    ktm.__setstate__(([tuple_cls(*t) for t in tm.tuples], topo, [0] + first, id2state, id2pdf.tolist(),
                      tm.num_pdfs, tm.log_probs.tolist(), non_loop.tolist()))
    return ktm


def gmm_loglikes(am: Any, feats: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Kaldi DiagGmm::LogLikelihood for every pdf of an AmDiagGmm (gmm/model.py) and frame: T x num_pdfs."""
    g = am.stacked()
    w, off = g["w"], g["offsets"]
    sizes = np.diff(off)
    x = np.asarray(feats, dtype=np.float32)
    x = np.concatenate([x, x * x, np.ones((x.shape[0], 1), np.float32)], axis=1)
    out = np.empty((x.shape[0], sizes.size), dtype=np.float32)
    for s in range(0, x.shape[0], chunk):
        ll = x[s:s + chunk] @ w.T
        top = np.maximum.reduceat(ll, off[:-1], axis=1)
        ll = np.exp(ll - np.repeat(top, sizes, axis=1))
        out[s:s + chunk] = top + np.log(np.add.reduceat(ll, off[:-1], axis=1))
    return out


# ----------------------------------------------------------------------------- decoding
class Decoder:
    """One HCLG and transition model; :meth:`decode` per utterance (decoders are reused, as in Kaldi)."""

    def __init__(self, graph: Any, tm: TransitionModel, config: DecodeConfig = DecodeConfig()):
        import kaldi_decoder

        from ..gmm.k2 import khg

        self.graph, self.config, self.num_pdfs = graph, config, tm.num_pdfs  # the decoders do not own the graph
        self.tid2pdf = tm.transition_id_to_pdf()[1:].astype(np.int64)
        self._ktm = khg_transition_model(tm)
        c = config
        self._faster = None if c.lmwts and c.wips else khg.LatticeFasterDecoder(graph, khg.LatticeFasterDecoderConfig(
            beam=c.beam, max_active=c.max_active, min_active=c.min_active, lattice_beam=c.lattice_beam,
            determinize_lattice=False))  # the best path alone (no sweep): with max-active, as latgen-faster
        simple = kaldi_decoder.LatticeSimpleDecoderConfig()
        simple.beam, simple.lattice_beam = c.beam, c.lattice_beam
        self._simple = kaldi_decoder.LatticeSimpleDecoder(graph, simple)

    def decode(self, key: str, loglikes: np.ndarray) -> UttResult | None:
        """Decode one T x num_pdfs log-likelihood matrix; None when no final state is reached (and
        ``allow_partial`` is off), as latgen-faster-mapped then writes nothing."""
        import kaldi_decoder
        import kaldifst

        from ..gmm.k2 import khg

        t0, c = time.perf_counter(), self.config
        if loglikes.ndim != 2 or loglikes.shape[1] != self.num_pdfs or loglikes.shape[0] == 0:
            raise BabelflowError(f"utterance '{key}': log-likelihoods of shape {loglikes.shape}, "
                                 f"the model has {self.num_pdfs} pdfs")
        m = np.ascontiguousarray(loglikes[:, self.tid2pdf] * np.float32(c.acoustic_scale), dtype=np.float32)
        if not (c.lmwts and c.wips):
            ok, ali, words, loglike = khg.decode_utterance_lattice_faster(
                self._faster, khg.DecodableCtc(m), self._ktm, key, c.allow_partial)
            if not ok or len(ali) != m.shape[0]:
                return None
            ali = np.asarray(ali, dtype=np.int32)
            ac = -float(m[np.arange(m.shape[0]), ali - 1].sum(dtype=np.float64))
            return UttResult(key, m.shape[0], Hyp(list(words), -loglike - ac, ac), ali,
                             seconds=time.perf_counter() - t0)
        self._simple.decode(kaldi_decoder.DecodableCtc(m))
        if not c.allow_partial and not np.isfinite(self._simple.final_relative_cost()):
            return None  # no final state reached; with allow_partial, every state counts as final (Kaldi)
        done, raw = self._simple.get_raw_lattice()
        if not done:
            return None
        ok, ali, words, w = kaldifst.get_linear_symbol_sequence(kaldifst.shortest_path(raw))
        if not ok or len(ali) != m.shape[0]:
            return None
        res = UttResult(key, m.shape[0], Hyp(list(words), w.value1, w.value2), np.asarray(ali, dtype=np.int32))
        res.lattice = word_lattice(raw, c.acoustic_scale, c.lattice_beam, c.max_det_states)
        res.sweep = best_paths(res.lattice, c.lmwts, c.wips)
        res.seconds = time.perf_counter() - t0
        return res
