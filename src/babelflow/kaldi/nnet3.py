"""Kaldi nnet3 models: raw ``Nnet`` (``nnet3/nnet-nnet.cc``) and ``AmNnetSimple`` (``final.mdl``).

A raw nnet is ``<Nnet3>``, a newline, the config lines (one node each, in Kaldi's normal form),
an empty line, ``<NumComponents> N``, N times ``<ComponentName> name <Type>...</Type>``, and
``</Nnet3>``; the config part is plain text even in binary files. An ``.mdl`` is a
TransitionModel, that nnet, then ``<LeftContext> l <RightContext> r <Priors> vector``.
Reading then writing gives Kaldi's bytes in both modes.

The config lines and their descriptors are parsed and printed by :mod:`.nnet3_descriptor`,
the components by :mod:`.nnet3_components`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_open
from . import basic_io as bio
from .basic_io import KaldiFormatError, read_kaldi_file
from .nnet3_components import Component, component_dims, kaldi_copy_component, read_component
from .nnet3_descriptor import Descriptor, Node, is_valid_node_name, parse_config_line
from .transition_model import TransitionModel

__all__ = ["Nnet", "AmNnetSimple", "read_nnet", "read_am_nnet", "write_nnet", "write_am_nnet", "compute_context"]

_MAX_LINE = 1 << 20


# ----------------------------------------------------------------------------- Nnet
@dataclass
class Nnet:
    """A raw nnet3 network: config lines (Kaldi's normal form, no ``component`` lines) and
    named components in file order."""

    config_lines: list[str] = field(default_factory=list)
    components: list[tuple[str, Component]] = field(default_factory=list)

    def nodes(self) -> list[Node]:
        """Parse and check the config lines (unique names, known references)."""
        nodes = [parse_config_line(line) for line in self.config_lines]
        names = [n.name for n in nodes]
        comps = {name for name, _ in self.components}
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise KaldiFormatError(f"node name {dup!r} is used twice")
        if len(comps) != len(self.components):
            raise KaldiFormatError("two components have the same name")
        known = set(names)
        for n in nodes:
            refs = list(n.desc.node_names()) if n.desc else [n.attrs["input-node"]] if "input-node" in n.attrs else []
            for r in refs:
                if r not in known:
                    raise KaldiFormatError(f"node {n.name!r} refers to an undefined node {r!r}")
            if n.kind == "component-node" and n.attrs["component"] not in comps:
                raise KaldiFormatError(f"node {n.name!r} uses an undefined component {n.attrs['component']!r}")
        return nodes

    def input_nodes(self) -> list[str]:
        return [n.name for n in self.nodes() if n.kind == "input-node"]

    def output_nodes(self) -> list[str]:
        return [n.name for n in self.nodes() if n.kind == "output-node"]

    def component(self, name: str) -> Component:
        for cname, comp in self.components:
            if cname == name:
                return comp
        raise KeyError(f"no component named {name!r}")

    def kaldi_copy(self) -> Nnet:
        """What ``nnet3-copy`` writes after reading this net (see :func:`kaldi_copy_component`)."""
        return Nnet([n.line() for n in self.nodes()], [(name, kaldi_copy_component(c)) for name, c in self.components])

    def rename_node(self, old: str, new: str) -> None:
        """``nnet3-copy --edits='rename-node old-name=OLD new-name=NEW'``: the node and every
        descriptor reference to it; component names are unchanged."""
        nodes = self.nodes()
        names = {n.name for n in nodes}
        if old not in names:
            raise BabelflowError(f"cannot rename node {old!r} to {new!r}: there is no node called {old!r}")
        if new in names:
            raise BabelflowError(f"cannot rename node {old!r} to {new!r}: a node called {new!r} exists")
        if not is_valid_node_name(new):
            raise BabelflowError(f"cannot rename node {old!r}: {new!r} is not a valid node name")
        for n in nodes:
            n.name = new if n.name == old else n.name
            n.desc = n.desc.renamed(old, new) if n.desc else None
            if n.attrs.get("input-node") == old:
                n.attrs["input-node"] = new
        self.config_lines = [n.line() for n in nodes]

    def node_dim(self, name: str) -> int:
        """Output dimension of a node (Kaldi's NetworkNode::Dim)."""
        nodes, active = {n.name: n for n in self.nodes()}, set()

        def desc_dim(d: Descriptor) -> int:
            if d.op == "node":
                return dim(d.params[0])
            if d.op == "Const":
                return d.params[1]
            if d.op == "Append":
                return sum(desc_dim(a) for a in d.args)
            return desc_dim(d.args[0])

        def dim(nm: str) -> int:
            n = nodes[nm]
            if nm in active:
                raise BabelflowError(f"node {nm!r}: its dimension depends on itself")
            active.add(nm)
            if n.kind in ("input-node", "dim-range-node"):
                d = int(n.attrs["dim"])
            elif n.kind == "output-node":
                d = desc_dim(n.desc)
            else:
                d = component_dims(self.component(n.attrs["component"]))[1]
            active.discard(nm)
            return d

        if name not in nodes:
            raise KeyError(f"no node named {name!r}")
        return dim(name)

    @classmethod
    def read(cls, f: BinaryIO, binary: bool) -> Nnet:
        """Kaldi Nnet::Read; an ``.mdl`` (TransitionModel first) gives its nnet, as Kaldi does."""
        if not binary:
            bio._skip_ws(f)
        if bio.peek(f, 2) == b"<T":
            TransitionModel.read(f, binary)
            return AmNnetSimple._read_rest(f, binary, None).nnet
        return cls._read_raw(f, binary)

    @classmethod
    def _read_raw(cls, f: BinaryIO, binary: bool) -> Nnet:
        bio.expect_token(f, binary, "<Nnet3>")
        rest = f.readline(_MAX_LINE)
        if rest.strip(b"\r\n"):
            raise KaldiFormatError(f"expected a newline after <Nnet3>, got {rest[:40]!r}")
        lines = []
        while True:
            raw = f.readline(_MAX_LINE)
            if not raw:
                raise KaldiFormatError("unexpected end of file in the config lines (truncated?)")
            line = raw.rstrip(b"\n").rstrip(b"\r")
            if not line:
                break
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                raise KaldiFormatError(f"config line {line[:40]!r} is not text") from None
        bio.expect_token(f, binary, "<NumComponents>")
        n = bio.read_int32(f, binary)
        if not 0 <= n < 100000:
            raise KaldiFormatError(f"implausible number of components {n}")
        comps = []
        for i in range(n):
            bio.expect_token(f, binary, "<ComponentName>")
            name = bio.read_token(f, binary)
            try:
                comps.append((name, read_component(f, binary)))
            except KaldiFormatError as e:
                raise KaldiFormatError(f"component {i} {name!r}: {e}") from None
        bio.expect_token(f, binary, "</Nnet3>")
        nnet = cls(lines, comps)
        nnet.nodes()  # checks the config part, as Kaldi's ReadConfig does
        return nnet

    def write(self, f: BinaryIO, binary: bool) -> None:
        """Kaldi Nnet::Write (no binary header; see :func:`write_nnet`)."""
        lines = [n.line() for n in self.nodes()]
        f.write(b"<Nnet3> \n" + "".join(line + "\n" for line in lines).encode() + b"\n")
        bio.write_token(f, binary, "<NumComponents>")
        bio.write_int32(f, binary, len(self.components))
        f.write(b"" if binary else b"\n")
        for name, comp in self.components:
            bio.write_token(f, binary, "<ComponentName>")
            bio.write_token(f, binary, name)
            comp.write(f, binary)
            f.write(b"" if binary else b"\n")
        bio.write_token(f, binary, "</Nnet3>")


def compute_context(nnet: Nnet, output: str | None = None) -> tuple[int, int]:
    """(left, right) frames of ``input`` that ``output`` needs around each frame (Kaldi's
    ComputeSimpleNnetContext for nets whose components work frame by frame, plus
    TdnnComponent time offsets). Default output: ``output``, else the widest output node.
    IfDefined() terms and ReplaceIndex(.., t, ..) (i-vectors) add no context."""
    nodes = {n.name: n for n in nnet.nodes()}
    memo: dict[str, tuple[int, int] | None] = {}

    def union(rs: list) -> tuple[int, int] | None:
        rs = [r for r in rs if r is not None]
        return (min(r[0] for r in rs), max(r[1] for r in rs)) if rs else None

    def of_desc(d: Descriptor) -> tuple[int, int] | None:
        if d.op == "node":
            return of_node(d.params[0])
        if d.op in ("Const", "IfDefined") or (d.op == "ReplaceIndex" and d.params[0] == "t"):
            return None
        r = of_desc(d.args[0]) if d.op == "Failover" else union([of_desc(a) for a in d.args])
        if r is not None and d.op == "Offset":
            return r[0] + d.params[0], r[1] + d.params[0]
        if r is not None and d.op == "Round":
            return r[0] - (d.params[0] - 1), r[1]
        return r

    def of_node(name: str) -> tuple[int, int] | None:
        if name in memo:
            if memo[name] == ():
                raise BabelflowError(f"compute_context: node {name!r} depends on itself without IfDefined()")
            return memo[name]
        n, memo[name] = nodes[name], ()
        if n.kind == "input-node":
            r = (0, 0) if name == "input" else None
        elif n.kind == "dim-range-node":
            r = of_node(n.attrs["input-node"])
        else:
            r = of_desc(n.desc)
            comp = nnet.component(n.attrs["component"]) if n.kind == "component-node" else None
            offs = comp.get("<TimeOffsets>", None) if comp is not None else None
            if r is not None and offs:
                r = (r[0] + min(offs), r[1] + max(offs))
        memo[name] = r
        return r

    outs = [output] if output else ["output"] if "output" in nodes else \
        [n for n in nodes if nodes[n].kind == "output-node"]
    if not outs or any(o not in nodes or nodes[o].kind != "output-node" for o in outs):
        raise BabelflowError(f"compute_context: no output node {output or 'output'!r}")
    if "input" not in nodes or nodes["input"].kind != "input-node":
        raise BabelflowError("compute_context: the nnet has no input node called 'input'")
    r = union([of_node(o) for o in outs]) or (0, 0)
    return max(0, -r[0]), max(0, r[1])


# ----------------------------------------------------------------------------- AmNnetSimple
@dataclass(eq=False)
class AmNnetSimple:
    """``final.mdl``: TransitionModel + Nnet + context + priors (empty = none)."""

    transition_model: TransitionModel
    nnet: Nnet
    left_context: int = 0
    right_context: int = 0
    priors: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))

    def __post_init__(self) -> None:
        self.priors = np.asarray(self.priors, dtype=np.float32).reshape(-1)

    @classmethod
    def from_nnet(cls, tm: TransitionModel, nnet: Nnet, priors: np.ndarray | None = None) -> AmNnetSimple:
        """As ``nnet3-am-init``: the context computed from the net; priors must match ``output``."""
        am = cls(tm, nnet, *compute_context(nnet, "output"), np.zeros(0) if priors is None else priors)
        am.check()
        return am

    def check(self) -> None:
        nodes = self.nnet.output_nodes()
        if "output" not in nodes or "input" not in self.nnet.input_nodes():
            raise BabelflowError("an AmNnetSimple needs an input node 'input' and an output node 'output'")
        pdfs = self.nnet.node_dim("output")
        if pdfs != self.transition_model.num_pdfs:
            raise BabelflowError(f"nnet output dim {pdfs} != {self.transition_model.num_pdfs} pdfs "
                                 f"of the transition model")
        if self.priors.size not in (0, pdfs):
            raise BabelflowError(f"priors have dim {self.priors.size}, the model has {pdfs} pdfs")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AmNnetSimple):
            return NotImplemented
        return (self.transition_model == other.transition_model and self.nnet == other.nnet
                and (self.left_context, self.right_context) == (other.left_context, other.right_context)
                and np.array_equal(self.priors, other.priors))

    def kaldi_copy(self) -> AmNnetSimple:
        """What ``nnet3-am-copy`` writes after reading this model: the net as
        :meth:`Nnet.kaldi_copy`, the context recomputed (Kaldi does not trust the stored one)."""
        nnet = self.nnet.kaldi_copy()
        return AmNnetSimple(self.transition_model, nnet, *compute_context(nnet, "output"), self.priors.copy())

    @classmethod
    def read(cls, f: BinaryIO, binary: bool | None = None) -> AmNnetSimple:
        """Read a whole ``.mdl`` from ``f``; ``binary=None``: decided by the ``\\0B`` header."""
        if binary is None:
            binary = bio.read_binary_header(f)
        return cls._read_rest(f, binary, TransitionModel.read(f, binary))

    @classmethod
    def _read_rest(cls, f: BinaryIO, binary: bool, tm: TransitionModel | None) -> AmNnetSimple:
        nnet = Nnet._read_raw(f, binary)
        bio.expect_token(f, binary, "<LeftContext>")
        left = bio.read_int32(f, binary)
        bio.expect_token(f, binary, "<RightContext>")
        right = bio.read_int32(f, binary)
        bio.expect_token(f, binary, "<Priors>")
        return cls(tm, nnet, left, right, bio.read_float_vector(f, binary))

    def write(self, f: BinaryIO, binary: bool = True) -> None:
        """The whole ``.mdl`` (binary: with the ``\\0B`` header)."""
        if binary:
            bio.write_binary_header(f)
        self.transition_model.write(f, binary, header=False)
        self.nnet.write(f, binary)
        bio.write_token(f, binary, "<LeftContext>")
        bio.write_int32(f, binary, self.left_context)
        bio.write_token(f, binary, "<RightContext>")
        bio.write_int32(f, binary, self.right_context)
        bio.write_token(f, binary, "<Priors>")
        bio.write_float_vector(f, binary, self.priors)


# ----------------------------------------------------------------------------- files
def read_nnet(path: str | os.PathLike) -> Nnet:
    """A raw nnet3 (``.raw``) or the nnet inside an ``.mdl``, binary or text."""
    return read_kaldi_file(path, "nnet3 model", lambda f: Nnet.read(f, bio.read_binary_header(f)))


def read_am_nnet(path: str | os.PathLike) -> AmNnetSimple:
    return read_kaldi_file(path, "nnet3 acoustic model (.mdl)", AmNnetSimple.read)


def write_nnet(path: str | os.PathLike, nnet: Nnet, binary: bool = True) -> None:
    with atomic_open(path, "wb") as f:
        if binary:
            bio.write_binary_header(f)
        nnet.write(f, binary)


def write_am_nnet(path: str | os.PathLike, am: AmNnetSimple, binary: bool = True) -> None:
    with atomic_open(path, "wb") as f:
        am.write(f, binary)
