"""Kaldi's GMM acoustic model (``gmm/diag-gmm.cc``, ``gmm/am-diag-gmm.cc``) and ``final.mdl``.

A Kaldi GMM model file is a TransitionModel followed by an AmDiagGmm: one diagonal GMM per
pdf, stored in Kaldi's natural-parameter form (gconsts, weights, means*inv_vars, inv_vars).
We read and write it byte-exactly (binary and text) so that alignment dirs made here are
usable by Kaldi's own tools, and we do the model arithmetic (ML re-estimation, mixing up,
transition update) in numpy: vectorised, and deterministic where kaldi-hmm-gmm is not (its
mix-up seeds from ``std::random_device``). Float handling follows Kaldi where it decides
bytes (gconsts, natural-form conversion): float32 storage, double sums.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_open
from ..kaldi import basic_io as bio
from ..kaldi.basic_io import KaldiFormatError, read_kaldi_file
from ..kaldi.general_matrix import matrix_to_text, read_general_matrix
from ..kaldi.hmm_topology import HmmTopology
from ..kaldi.transition_model import TransitionModel
from ..kaldi.tree import ContextDependency

__all__ = ["DiagGmm", "AmDiagGmm", "GmmModel", "read_gmm_model", "write_gmm_model", "transition_state_ranges",
           "transition_model_for_tree", "to_khg_tree", "to_khg_transition_model",
           "to_khg_am", "from_khg_am"]

_F32 = np.float32
M_LOG_2PI = 1.8378770664093454835606594728112


@dataclass
class DiagGmm:
    """One pdf's mixture in Kaldi's stored form; every array float32, one row per component."""

    weights: np.ndarray  # (n,)
    means_invvars: np.ndarray  # (n, dim)
    inv_vars: np.ndarray  # (n, dim)
    gconsts: np.ndarray | None = None  # (n,), from compute_gconsts()

    @classmethod
    def from_moments(cls, weights: np.ndarray, means: np.ndarray, variances: np.ndarray) -> DiagGmm:
        """Kaldi DiagGmmNormal::CopyToDiagGmm: inv_vars = 1/var in float, means_invvars = mean * inv_vars."""
        inv_vars = (_F32(1.0) / np.atleast_2d(variances).astype(_F32)).astype(_F32)
        return cls(np.atleast_1d(weights).astype(_F32), np.atleast_2d(means).astype(_F32) * inv_vars, inv_vars)

    @property
    def num_gauss(self) -> int:
        return int(self.weights.shape[0])

    @property
    def dim(self) -> int:
        return int(self.inv_vars.shape[1])

    @property
    def means(self) -> np.ndarray:
        return self.means_invvars.astype(np.float64) / self.inv_vars

    @property
    def variances(self) -> np.ndarray:
        return 1.0 / self.inv_vars.astype(np.float64)

    def compute_gconsts(self) -> None:
        """Kaldi DiagGmm::ComputeGconsts (done lazily: :meth:`AmDiagGmm.compute_gconsts` does many at once)."""
        self.gconsts = _gconsts(self.weights, self.means_invvars, self.inv_vars)

    @classmethod
    def read(cls, f: BinaryIO, binary: bool) -> DiagGmm:
        tok = bio.read_token(f, binary)
        if tok not in ("<DiagGMM>", "<DiagGMMBegin>"):
            raise KaldiFormatError(f"expected <DiagGMM>, got {tok!r}")
        tok = bio.read_token(f, binary)
        if tok == "<GCONSTS>":  # optional, and recomputed (AmDiagGmm.read) rather than trusted, as Kaldi does
            bio.read_float_vector(f, binary)
            bio.expect_token(f, binary, "<WEIGHTS>")
        elif tok != "<WEIGHTS>":
            raise KaldiFormatError(f"expected <WEIGHTS> or <GCONSTS>, got {tok!r}")
        weights = bio.read_float_vector(f, binary)
        bio.expect_token(f, binary, "<MEANS_INVVARS>")
        mi = read_general_matrix(f, binary)
        bio.expect_token(f, binary, "<INV_VARS>")
        iv = read_general_matrix(f, binary)
        if not isinstance(mi, np.ndarray) or not isinstance(iv, np.ndarray) or mi.shape != iv.shape \
                or mi.shape[0] != weights.size:
            raise KaldiFormatError("DiagGMM: inconsistent sizes of weights, means and variances")
        if bio.read_token(f, binary) not in ("</DiagGMM>", "<DiagGMMEnd>"):
            raise KaldiFormatError("expected </DiagGMM>")
        return cls(weights.astype(_F32), mi.astype(_F32), iv.astype(_F32))

    def write(self, f: BinaryIO, binary: bool) -> None:
        if self.gconsts is None:
            self.compute_gconsts()
        bio.write_token(f, binary, "<DiagGMM>")
        if not binary:
            f.write(b"\n")
        for tok, vec in (("<GCONSTS>", self.gconsts), ("<WEIGHTS>", self.weights)):
            bio.write_token(f, binary, tok)
            bio.write_float_vector(f, binary, vec.astype(_F32))
        for tok, mat in (("<MEANS_INVVARS>", self.means_invvars), ("<INV_VARS>", self.inv_vars)):
            bio.write_token(f, binary, tok)
            _write_matrix(f, binary, mat)
        bio.write_token(f, binary, "</DiagGMM>")
        if not binary:
            f.write(b"\n")


def _gconsts(weights: np.ndarray, means_invvars: np.ndarray, inv_vars: np.ndarray) -> np.ndarray:
    """Kaldi's gconst = log w - D/2 log 2pi + sum_d (log iv - mi^2/iv)/2, float for float (a float32 sum of
    double terms per dimension), so that written models match Kaldi's bytes."""
    dim = inv_vars.shape[1]
    with np.errstate(divide="ignore"):
        gc = np.log(weights.astype(_F32)) + _F32(-0.5 * M_LOG_2PI * dim)
        iv, mi = inv_vars.astype(np.float64), means_invvars.astype(np.float64)
        terms = 0.5 * np.log(inv_vars.astype(_F32)).astype(np.float64) - 0.5 * mi * mi / iv
    for d in range(dim):
        gc = (gc.astype(np.float64) + terms[:, d]).astype(_F32)
    if np.isnan(gc).any():
        raise BabelflowError("GMM: not a number in gconst computation")
    return np.where(np.isinf(gc), -np.inf, gc).astype(_F32)


def _write_matrix(f: BinaryIO, binary: bool, m: np.ndarray) -> None:
    """Kaldi Matrix<float>::Write (``FM`` rows cols data / `` [\\n  row ]\\n``)."""
    if not binary:
        f.write(matrix_to_text(m).encode())
        return
    bio.write_token(f, True, "FM")
    bio.write_int32(f, True, m.shape[0])
    bio.write_int32(f, True, m.shape[1])
    f.write(np.ascontiguousarray(m, dtype="<f4").tobytes())


@dataclass
class AmDiagGmm:
    """Kaldi's AmDiagGmm: ``pdfs[i]`` is the GMM of pdf-id ``i``."""

    pdfs: list[DiagGmm]

    @classmethod
    def init_mono(cls, num_pdfs: int, mean: np.ndarray, var: np.ndarray) -> AmDiagGmm:
        """gmm-init-mono: the same one-Gaussian GMM (global mean and variance) for every pdf."""
        mean, var = np.asarray(mean, dtype=np.float64), np.asarray(var, dtype=np.float64)
        if var.min() <= 0.0:
            raise BabelflowError("gmm-init-mono: bad variance (constant feature dimension?)")
        inv_var = (1.0 / var).astype(_F32)  # Kaldi inverts in double, then stores float
        gmm = DiagGmm(np.ones(1, _F32), (mean.astype(_F32) * inv_var)[None], inv_var[None].copy())
        gmm.compute_gconsts()
        return cls([DiagGmm(gmm.weights.copy(), gmm.means_invvars.copy(), gmm.inv_vars.copy(), gmm.gconsts.copy())
                    for _ in range(num_pdfs)])

    @property
    def num_pdfs(self) -> int:
        return len(self.pdfs)

    @property
    def dim(self) -> int:
        return self.pdfs[0].dim if self.pdfs else 0

    @property
    def num_gauss(self) -> int:
        return sum(g.num_gauss for g in self.pdfs)

    def compute_gconsts(self) -> None:
        """Every missing gconst, in one vectorised pass."""
        todo = [g for g in self.pdfs if g.gconsts is None]
        if todo:
            gc = _gconsts(*(np.concatenate([getattr(g, a) for g in todo])
                            for a in ("weights", "means_invvars", "inv_vars")))
            for g, part in zip(todo, np.split(gc, np.cumsum([g.num_gauss for g in todo])[:-1])):
                g.gconsts = part

    def stacked(self) -> dict[str, np.ndarray]:
        """All Gaussians as one float32 matrix ``w`` = [means_invvars, -inv_vars/2, gconst] (so that
        [x, x^2, 1] @ w.T is every log-likelihood) and ``offsets`` (pdf ``p`` = rows ``offsets[p]:offsets[p+1]``)."""
        self.compute_gconsts()
        w = np.concatenate([np.concatenate([g.means_invvars, -0.5 * g.inv_vars, g.gconsts[:, None]], axis=1)
                            for g in self.pdfs]).astype(_F32)
        sizes = np.array([g.num_gauss for g in self.pdfs])
        return {"w": w, "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)}

    @classmethod
    def read(cls, f: BinaryIO, binary: bool) -> AmDiagGmm:
        bio.expect_token(f, binary, "<DIMENSION>")
        dim = bio.read_int32(f, binary)
        bio.expect_token(f, binary, "<NUMPDFS>")
        n = bio.read_int32(f, binary)
        if not 0 < n < 2**24:
            raise KaldiFormatError(f"AmDiagGmm: implausible number of pdfs {n}")
        pdfs = [DiagGmm.read(f, binary) for _ in range(n)]
        if any(g.dim != dim for g in pdfs):
            raise KaldiFormatError(f"AmDiagGmm: a GMM's dimension differs from {dim}")
        am = cls(pdfs)
        am.compute_gconsts()  # recomputed rather than trusted, as Kaldi does
        return am

    def write(self, f: BinaryIO, binary: bool) -> None:
        self.compute_gconsts()
        bio.write_token(f, binary, "<DIMENSION>")
        bio.write_int32(f, binary, self.dim)
        bio.write_token(f, binary, "<NUMPDFS>")
        bio.write_int32(f, binary, self.num_pdfs)
        for g in self.pdfs:
            g.write(f, binary)


@dataclass
class GmmModel:
    """A Kaldi GMM ``.mdl`` (gmm-init-mono, gmm-est): TransitionModel then AmDiagGmm."""

    transition_model: TransitionModel
    am: AmDiagGmm

    def write(self, f: BinaryIO, binary: bool = True) -> None:
        if self.am.num_pdfs != self.transition_model.num_pdfs:
            raise BabelflowError(f"GMM model: {self.am.num_pdfs} GMMs for {self.transition_model.num_pdfs} pdfs")
        self.transition_model.write(f, binary)
        self.am.write(f, binary)

    @classmethod
    def read(cls, f: BinaryIO, binary: bool | None = None) -> GmmModel:
        if binary is None:
            binary = bio.read_binary_header(f)
        return cls(TransitionModel.read(f, binary), AmDiagGmm.read(f, binary))


def read_gmm_model(path: str | os.PathLike) -> GmmModel:
    """A Kaldi GMM model file, binary or text."""
    return read_kaldi_file(path, "GMM model", GmmModel.read)


def write_gmm_model(path: str | os.PathLike, model: GmmModel, binary: bool = True) -> None:
    """Write atomically, as gmm-est does (binary gets the ``\\0B`` header)."""
    with atomic_open(path, "wb") as f:
        model.write(f, binary)


# ----------------------------------------------------------------------------- transitions
def transition_state_ranges(tm: TransitionModel) -> tuple[np.ndarray, np.ndarray]:
    """(first transition-id of each transition-state plus the end, transition-state of each id; index 0 unused)."""
    sizes = [len(tm.topology.entry_for_phone(t[0])[t[1]].transitions) for t in tm.tuples]
    first = np.concatenate([[1], 1 + np.cumsum(sizes)]).astype(np.int64)
    return first, np.concatenate([[-1], np.repeat(np.arange(len(sizes)), sizes)])


def _non_self_loop_log_probs(tm: TransitionModel) -> np.ndarray:
    """Kaldi ComputeDerivedOfProbs: log(1 - p(self-loop)) per transition-state (0 without a self-loop)."""
    _, tstate = transition_state_ranges(tm)
    ids = np.flatnonzero(tm.transition_id_is_self_loop())
    out = np.zeros(len(tm.tuples), dtype=_F32)
    out[tstate[ids]] = np.log(np.maximum(_F32(1.0) - np.exp(tm.log_probs[ids]), _F32(1e-10)))
    return out


# ----------------------------------------------------------------------------- kaldi-hmm-gmm bridges
def _khg():
    from .k2 import khg

    return khg


def to_khg_tree(tree: ContextDependency):
    """A khg.ContextDependency with the same bytes (its pickle state is Kaldi's binary body)."""
    import io

    buf = io.BytesIO()
    tree.write(buf, binary=True, header=False)
    ctx = _khg().ContextDependency.__new__(_khg().ContextDependency)
    ctx.__setstate__((np.frombuffer(buf.getvalue(), dtype=np.int8).tolist(),))
    return ctx


def _khg_topology(topo: HmmTopology):
    import io

    buf = io.BytesIO()
    topo.write(buf, binary=False)
    out = _khg().HmmTopology()
    out.read(buf.getvalue().decode())
    return out


def to_khg_transition_model(tm: TransitionModel, tree: ContextDependency):
    """khg.TransitionModel for ``tree`` with ``tm``'s (trained) log-probs, through its pickle state (only a
    fresh object takes a state)."""
    state = list(_khg().TransitionModel(to_khg_tree(tree), _khg_topology(tm.topology)).__getstate__())
    if [tuple(t.__getstate__()) for t in state[0]] != [tuple(t) for t in tm.tuples]:
        raise BabelflowError("transition model does not match the tree and topology")
    state[6], state[7] = tm.log_probs.tolist(), [0.0] + _non_self_loop_log_probs(tm).tolist()
    ktm = _khg().TransitionModel.__new__(_khg().TransitionModel)
    ktm.__setstate__(tuple(state))
    return ktm


def transition_model_for_tree(tree: ContextDependency, topo: HmmTopology) -> TransitionModel:
    """Kaldi ``TransitionModel(ctx_dep, topo)``: tuples from the tree's pdf info, probs from the topology."""
    ktm = _khg().TransitionModel(to_khg_tree(tree), _khg_topology(topo))
    return TransitionModel.from_topology(topo, [tuple(t.__getstate__()) for t in ktm.tuples])


def to_khg_am(am: AmDiagGmm, boost_pdfs: tuple[int, ...] = (), boost: float = 1.0):
    """khg.AmDiagGmm with the same stored parameters (for khg's decodables); ``boost`` scales the weights of
    ``boost_pdfs``, as Kaldi's gmm-boost-silence does before aligning."""
    khg = _khg()
    out = khg.AmDiagGmm()
    boosted = set(boost_pdfs) if boost != 1.0 else set()
    for p, g in enumerate(am.pdfs):
        k = khg.DiagGmm.__new__(khg.DiagGmm)
        w = (g.weights * _F32(boost)).astype(_F32) if p in boosted else g.weights
        k.__setstate__((np.ascontiguousarray(w, _F32), np.ascontiguousarray(g.inv_vars, _F32),
                        np.ascontiguousarray(g.means_invvars, _F32)))
        k.compute_gconsts()
        out.add_pdf(k)
    return out


def from_khg_am(kam) -> AmDiagGmm:
    """An AmDiagGmm from a khg.AmDiagGmm (copies: khg's arrays are views of memory it frees)."""
    pdfs = []
    for i in range(kam.num_pdfs):
        k = kam.get_pdf(i)
        pdfs.append(DiagGmm(*(np.array(a, dtype=_F32, copy=True) for a in (k.weights, k.means_invvars, k.inv_vars))))
        pdfs[-1].weights = pdfs[-1].weights.ravel()
    return AmDiagGmm(pdfs)
