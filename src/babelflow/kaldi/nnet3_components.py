"""nnet3 components (``nnet3/nnet-*-component.cc``) as generic token/value records.

Every supported Kaldi component is serialised as ``<Type>``, then ``<Token> value`` pairs, then
``</Type>``; which tokens appear (and in which order) depends on the component's settings
(e.g. ``<MaxChange>`` only when it is > 0). A :class:`Component` keeps exactly the pairs it
was read with, in file order, so writing it back gives Kaldi's bytes in both modes without
re-deriving Kaldi's rules. The binary format is not self-describing (an int32 and a float
are both a size byte 4 plus 4 bytes), so every readable type has a schema mapping each token
to its value kind; an unknown type or token is a :class:`KaldiFormatError`.

Stored values are what the file holds, not Kaldi's in-memory form: e.g. a nonlinearity's
``<ValueAvg>`` is ``value_sum / count`` and a BatchNorm's ``<StatsVar>`` is the variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from . import basic_io as bio
from .basic_io import KaldiFormatError
from .general_matrix import read_general_matrix, write_general_matrix

__all__ = ["Component", "COMPONENT_SCHEMAS", "read_component", "component_dims", "kaldi_copy_component"]

# value kinds: int32, BaseFloat, double, bool, float vector, float matrix, int32 vector,
# two int32s, two floats (LinearComponent/TdnnComponent write <RankInOut> r_in r_out)
I, F, D, B, V, M, IV, II, FF = "int32", "float", "double", "bool", "vector", "matrix", "ivector", "int32x2", "floatx2"

_UPDATABLE = {"<LearningRateFactor>": F, "<IsGradient>": B, "<MaxChange>": F, "<L2Regularize>": F,
              "<LearningRate>": F}
_AFFINE = {**_UPDATABLE, "<LinearParams>": M, "<BiasParams>": V, "<OrthonormalConstraint>": F}
_NONLINEAR = {"<Dim>": I, "<BlockDim>": I, "<ValueAvg>": V, "<DerivAvg>": V, "<Count>": D, "<OderivRms>": V,
              "<OderivCount>": D, "<NumDimsSelfRepaired>": D, "<NumDimsProcessed>": D,
              "<SelfRepairLowerThreshold>": F, "<SelfRepairUpperThreshold>": F, "<SelfRepairScale>": F}
_NONLINEAR_TYPES = ("SigmoidComponent", "TanhComponent", "RectifiedLinearComponent", "SoftmaxComponent",
                    "LogSoftmaxComponent")

COMPONENT_SCHEMAS: dict[str, dict[str, str]] = {
    "AffineComponent": _AFFINE,
    "NaturalGradientAffineComponent": {
        **_AFFINE, "<RankIn>": I, "<RankOut>": I, "<UpdatePeriod>": I, "<NumSamplesHistory>": F, "<Alpha>": F,
        # back-compatibility tokens Kaldi still reads
        "<MaxChangePerSample>": F, "<UpdateCount>": D, "<ActiveScalingCount>": D, "<MaxChangeScaleStats>": D},
    "FixedAffineComponent": {"<LinearParams>": M, "<BiasParams>": V},
    "LinearComponent": {**_UPDATABLE, "<Params>": M, "<OrthonormalConstraint>": F, "<UseNaturalGradient>": B,
                        "<RankInOut>": II, "<Alpha>": F, "<NumSamplesHistory>": F, "<UpdatePeriod>": I},
    "TdnnComponent": {**_AFFINE, "<TimeOffsets>": IV, "<UseNaturalGradient>": B, "<NumSamplesHistory>": F,
                      "<AlphaInOut>": FF, "<RankInOut>": II},
    **{t: _NONLINEAR for t in _NONLINEAR_TYPES},
    "NormalizeComponent": {"<Dim>": I, "<InputDim>": I, "<BlockDim>": I, "<TargetRms>": F, "<AddLogStddev>": B,
                           "<ValueAvg>": V, "<DerivAvg>": V, "<Count>": D},
    "BatchNormComponent": {"<Dim>": I, "<BlockDim>": I, "<Epsilon>": F, "<TargetRms>": F, "<TestMode>": B,
                           "<Count>": D, "<StatsMean>": V, "<StatsVar>": V},
    "NoOpComponent": {"<Dim>": I, "<BackpropScale>": F},
    "DropoutComponent": {"<Dim>": I, "<DropoutProportion>": F, "<DropoutPerFrame>": B, "<TestMode>": B},
    "PnormComponent": {"<InputDim>": I, "<OutputDim>": I},
    "FixedScaleComponent": {"<Scales>": V},
    "FixedBiasComponent": {"<Bias>": V},
}
_MISSING = object()


def _tok(token: str) -> str:
    return token if token.startswith("<") else f"<{token}>"


def _coerce(kind: str, v: object) -> object:
    """Normalise a value to what reading it from a file would give (so == means equal bytes)."""
    if kind == I:
        return int(v)
    if kind == F:
        return float(np.float32(v))
    if kind == D:
        return float(v)
    if kind == B:
        return bool(v)
    if kind == V:
        a = np.asarray(v)
        a = a.astype(np.float64 if a.dtype == np.float64 else np.float32)  # float64 is written as DV
        if a.ndim != 1:
            raise ValueError(f"expected a 1-D vector, got shape {a.shape}")
        return a
    if kind == M:
        a = np.asarray(v, dtype=np.float32)
        if a.ndim != 2:
            raise ValueError(f"expected a 2-D matrix, got shape {a.shape}")
        return a
    if kind == IV:
        return [int(x) for x in v]
    if kind == II:
        a, b = v
        return int(a), int(b)
    if kind == FF:
        a, b = v
        return float(np.float32(a)), float(np.float32(b))
    raise ValueError(f"unknown value kind {kind!r}")


def _read_value(f: BinaryIO, binary: bool, kind: str) -> object:
    if kind == I:
        return bio.read_int32(f, binary)
    if kind == F:
        return bio.read_float(f, binary)
    if kind == D:
        return bio.read_double(f, binary)
    if kind == B:
        return bio.read_bool(f, binary)
    if kind == V:
        double = binary and bio.peek(f, 2) == b"DV"
        return bio.read_float_vector(f, binary, np.float64 if double else np.float32)
    if kind == M:
        m = read_general_matrix(f, binary)
        if not isinstance(m, np.ndarray):
            raise KaldiFormatError(f"expected a full matrix, got a sparse one{bio._where(f)}")
        return m
    if kind == IV:
        return bio.read_int32_vector(f, binary)
    if kind == II:
        return bio.read_int32(f, binary), bio.read_int32(f, binary)
    if kind == FF:
        return bio.read_float(f, binary), bio.read_float(f, binary)
    raise ValueError(f"unknown value kind {kind!r}")


def _write_value(f: BinaryIO, binary: bool, kind: str, v: object) -> None:
    v = _coerce(kind, v)
    if kind == I:
        bio.write_int32(f, binary, v)
    elif kind == F:
        bio.write_float(f, binary, v)
    elif kind == D:
        bio.write_double(f, binary, v)
    elif kind == B:
        bio.write_bool(f, binary, v)
    elif kind == V:
        bio.write_float_vector(f, binary, v)
    elif kind == M:
        write_general_matrix(f, binary, v)
    elif kind == IV:
        bio.write_int32_vector(f, binary, v)
    elif kind == II:
        for x in v:
            bio.write_int32(f, binary, x)
    else:
        for x in v:
            bio.write_float(f, binary, x)


def _values_equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(a, b, equal_nan=True))
    return a == b


@dataclass(eq=False)
class Component:
    """One Kaldi component: its type name (``"RectifiedLinearComponent"``) and its
    ``(token, value)`` fields in file order (ints, floats, bools, float32 arrays)."""

    type: str
    fields: list[tuple[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        schema = COMPONENT_SCHEMAS.get(self.type)
        if schema is None:
            raise ValueError(f"unsupported component type {self.type!r}")
        seen = set()
        for i, (tok, v) in enumerate(self.fields):
            if tok not in schema:
                raise ValueError(f"<{self.type}> has no token {tok}")
            if tok in seen:
                raise ValueError(f"<{self.type}>: token {tok} appears twice")
            seen.add(tok)
            self.fields[i] = (tok, _coerce(schema[tok], v))

    def get(self, token: str, default: object = _MISSING) -> object:
        """The value of ``token`` (``"<Dim>"`` or ``"Dim"``); KeyError if absent and no default."""
        token = _tok(token)
        for tok, v in self.fields:
            if tok == token:
                return v
        if default is _MISSING:
            raise KeyError(f"<{self.type}> has no field {token}")
        return default

    def set(self, token: str, value: object) -> None:
        """Replace the value of ``token``; a token not yet present is appended at the end
        (the caller keeps Kaldi's token order)."""
        token = _tok(token)
        kind = COMPONENT_SCHEMAS[self.type].get(token)
        if kind is None:
            raise KeyError(f"<{self.type}> has no token {token}")
        value = _coerce(kind, value)
        for i, (tok, _) in enumerate(self.fields):
            if tok == token:
                self.fields[i] = (tok, value)
                return
        self.fields.append((token, value))

    def __contains__(self, token: str) -> bool:
        return any(tok == _tok(token) for tok, _ in self.fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Component):
            return NotImplemented
        return (self.type == other.type and len(self.fields) == len(other.fields)
                and all(t1 == t2 and _values_equal(v1, v2) for (t1, v1), (t2, v2) in zip(self.fields, other.fields)))

    def write(self, f: BinaryIO, binary: bool) -> None:
        schema = COMPONENT_SCHEMAS[self.type]
        bio.write_token(f, binary, f"<{self.type}>")
        for tok, v in self.fields:
            bio.write_token(f, binary, tok)
            _write_value(f, binary, schema[tok], v)
        bio.write_token(f, binary, f"</{self.type}>")


def read_component(f: BinaryIO, binary: bool) -> Component:
    """Kaldi Component::ReadNew: ``<Type>``, token/value pairs, ``</Type>``."""
    where = bio._where(f)
    tok = bio.read_token(f, binary)
    if len(tok) < 3 or tok[0] != "<" or tok[-1] != ">" or tok[1] == "/":
        raise KaldiFormatError(f"expected a component type such as <AffineComponent>, got {tok[:40]!r}{where}")
    ctype = tok[1:-1]
    schema = COMPONENT_SCHEMAS.get(ctype)
    if schema is None:
        raise KaldiFormatError(f"unknown or unsupported component type {tok}{where} "
                               f"(supported: {', '.join(sorted(COMPONENT_SCHEMAS))})")
    end, fields, seen = f"</{ctype}>", [], set()
    while True:
        where = bio._where(f)
        tok = bio.read_token(f, binary)
        if tok == end:
            comp = Component.__new__(Component)  # values are already in stored form
            comp.type, comp.fields = ctype, fields
            return comp
        if tok not in schema or tok in seen:
            what = "repeated" if tok in seen else "unexpected"
            raise KaldiFormatError(f"{what} token {tok[:40]!r} in <{ctype}>{where} (expected a field or {end})")
        seen.add(tok)
        try:
            fields.append((tok, _read_value(f, binary, schema[tok])))
        except KaldiFormatError as e:
            raise KaldiFormatError(f"<{ctype}> {tok}: {e}") from None


def component_dims(c: Component) -> tuple[int, int]:
    """(input dim, output dim) as Kaldi's InputDim()/OutputDim()."""
    for tok in ("<LinearParams>", "<Params>"):
        if tok in c:
            rows, cols = c.get(tok).shape
            return cols // max(1, len(c.get("<TimeOffsets>", [0]))), rows  # Tdnn: params span all offsets
    if c.type == "PnormComponent":
        return c.get("<InputDim>"), c.get("<OutputDim>")
    if c.type == "NormalizeComponent":
        dim = c.get("<InputDim>", None) or c.get("<Dim>")
        extra = dim // c.get("<BlockDim>", dim) if c.get("<AddLogStddev>", False) else 0
        return dim, dim + extra
    for tok in ("<Dim>", "<Scales>", "<Bias>"):
        if tok in c:
            v = c.get(tok)
            dim = v if isinstance(v, int) else len(v)
            return dim, dim
    raise ValueError(f"cannot tell the dimensions of a <{c.type}>")


# ----------------------------------------------------------------------------- Kaldi's re-write
_F32 = np.float32
_UNSET_THRESHOLD = -1000.0  # NonlinearComponent::kUnsetThreshold


def _avg_roundtrip(avg: np.ndarray, count: float) -> np.ndarray:
    """Kaldi reads ``avg`` into a double vector scaled by ``count`` and writes it as float,
    scaled by the float ``1/count`` (both scalings are BLAS scal calls)."""
    out = (np.asarray(avg, np.float64) * count).astype(_F32)
    return out * _F32(1.0 / count) if count != 0 else out


def kaldi_copy_component(c: Component) -> Component:
    """The component as Kaldi writes it after reading it (what ``nnet3-copy`` / ``nnet3-am-copy``
    output): optional tokens become Kaldi's defaults, back-compatibility tokens are dropped,
    and stored statistics go through Kaldi's float/double rescaling (not lossless: a
    nonlinearity's ``<ValueAvg>`` may change in the 7th digit). Bit-exact with Kaldi's CPU
    build for the types below; other types are returned unchanged."""
    g = c.get
    if c.type in ("AffineComponent", "NaturalGradientAffineComponent"):
        fl = [(t, g(t)) for t, keep in (("<LearningRateFactor>", g("<LearningRateFactor>", 1.0) != 1.0),
                                        ("<IsGradient>", g("<IsGradient>", False)),
                                        ("<MaxChange>", g("<MaxChange>", 0.0) > 0),
                                        ("<L2Regularize>", g("<L2Regularize>", 0.0) > 0)) if keep]
        fl += [(t, g(t)) for t in ("<LearningRate>", "<LinearParams>", "<BiasParams>")]
        ortho = [("<OrthonormalConstraint>", g("<OrthonormalConstraint>"))] if g("<OrthonormalConstraint>", 0.0) else []
        if c.type == "AffineComponent":
            return Component(c.type, fl + ortho)
        return Component(c.type, fl + [(t, g(t)) for t in ("<RankIn>", "<RankOut>")] + ortho
                         + [(t, g(t)) for t in ("<UpdatePeriod>", "<NumSamplesHistory>", "<Alpha>")])
    if c.type in _NONLINEAR_TYPES:
        dim, count, ocount = g("<Dim>"), g("<Count>"), g("<OderivCount>", 0.0)
        rms = np.asarray(g("<OderivRms>", np.zeros(0)), np.float64)
        sumsq = ((rms * rms) * ocount).astype(_F32)
        if ocount != 0:
            sumsq = sumsq * _F32(1.0 / ocount)
        fl = [("<Dim>", dim)] + ([("<BlockDim>", g("<BlockDim>"))] if g("<BlockDim>", dim) != dim else [])
        fl += [("<ValueAvg>", _avg_roundtrip(g("<ValueAvg>"), count)),
               ("<DerivAvg>", _avg_roundtrip(g("<DerivAvg>"), count)), ("<Count>", count),
               ("<OderivRms>", np.sqrt(np.maximum(sumsq, _F32(0)))), ("<OderivCount>", ocount),
               ("<NumDimsSelfRepaired>", g("<NumDimsSelfRepaired>", 0.0)),
               ("<NumDimsProcessed>", g("<NumDimsProcessed>", 0.0))]
        for t in ("<SelfRepairLowerThreshold>", "<SelfRepairUpperThreshold>"):
            if g(t, _UNSET_THRESHOLD) != _UNSET_THRESHOLD:
                fl.append((t, g(t)))
        return Component(c.type, fl + ([("<SelfRepairScale>", g("<SelfRepairScale>"))]
                                       if g("<SelfRepairScale>", 0.0) != 0 else []))
    if c.type == "BatchNormComponent":
        count = g("<Count>")
        m64 = np.asarray(g("<StatsMean>"), np.float64)
        mean = (m64 * count).astype(_F32)
        var = ((np.asarray(g("<StatsVar>"), np.float64) + m64 * m64) * count).astype(_F32)
        if count != 0:
            mean, var = mean * _F32(1.0 / count), var * _F32(1.0 / count)
            var = var - mean * mean  # float gbmv, no FMA (matches Kaldi+OpenBLAS output)
        return Component(c.type, [(t, g(t)) for t in ("<Dim>", "<BlockDim>", "<Epsilon>", "<TargetRms>",
                                                      "<TestMode>", "<Count>")]
                         + [("<StatsMean>", mean), ("<StatsVar>", var)])
    if c.type == "NormalizeComponent":
        dim = g("<InputDim>", None) or g("<Dim>")
        return Component(c.type, [("<InputDim>", dim)]
                         + ([("<BlockDim>", g("<BlockDim>"))] if g("<BlockDim>", dim) != dim else [])
                         + [("<TargetRms>", g("<TargetRms>", 1.0)), ("<AddLogStddev>", g("<AddLogStddev>", False))])
    return Component(c.type, list(c.fields))
