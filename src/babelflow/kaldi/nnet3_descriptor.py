"""nnet3 descriptors and config lines: the text part of a raw nnet (``nnet3/nnet-descriptor.cc``).

Descriptors (``input=`` of component and output nodes) are parsed into :class:`Descriptor`
trees and printed as Kaldi's ``WriteConfig`` does, after the main steps of Kaldi's
normalisation (Append flattening, Offset folding, Sum made binary, forwarding expressions
pushed inside Sum/Failover/IfDefined, Scale pushed down to node names). Config lines are
parsed into :class:`Node` records and printed in Kaldi's normal form, so a net's config
part round-trips byte-exactly.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from .basic_io import KaldiFormatError

__all__ = ["Descriptor", "Node", "parse_descriptor", "descriptor_append_offsets", "parse_config_line",
           "is_valid_node_name"]

_OPS = ("Append", "Sum", "Failover", "IfDefined", "Offset", "Switch", "Scale", "Const", "Round", "ReplaceIndex")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")  # Kaldi's IsValidName


def is_valid_node_name(name: str) -> bool:
    """Kaldi's IsValidName, and not a descriptor keyword (``Append`` etc. would not parse back)."""
    return bool(_NAME_RE.match(name)) and name not in _OPS


def _g(x: float) -> str:
    """A BaseFloat printed by a fresh C++ ostringstream (precision 6)."""
    return f"{float(np.float32(x)):g}"


# ----------------------------------------------------------------------------- descriptors
@dataclass(frozen=True)
class Descriptor:
    """``op`` is ``"node"`` or a Kaldi keyword; ``params``: node (name,), Offset (t, x), Round (m,),
    ReplaceIndex ("t"|"x", value), Scale (alpha,), Const (value, dim); others ()."""

    op: str
    args: tuple[Descriptor, ...] = ()
    params: tuple = ()

    def __str__(self) -> str:
        a, p = [str(x) for x in self.args], self.params
        if self.op == "node":
            return p[0]
        if self.op == "Offset":
            return f"Offset({a[0]}, {p[0]}" + (f", {p[1]}" if p[1] else "") + ")"
        if self.op == "Round":
            return f"Round({a[0]}, {p[0]})"
        if self.op == "ReplaceIndex":
            return f"ReplaceIndex({a[0]}, {p[0]}, {p[1]})"
        if self.op == "Scale":
            return f"Scale({_g(p[0])}, {a[0]})"
        if self.op == "Const":
            return f"Const({_g(p[0])}, {p[1]})"
        return f"{self.op}({', '.join(a)})"

    def node_names(self) -> Iterator[str]:
        if self.op == "node":
            yield self.params[0]
        for a in self.args:
            yield from a.node_names()

    def renamed(self, old: str, new: str) -> Descriptor:
        if self.op == "node":
            return Descriptor("node", (), (new,)) if self.params[0] == old else self
        return Descriptor(self.op, tuple(a.renamed(old, new) for a in self.args), self.params)


def parse_descriptor(text: str) -> Descriptor:
    """Parse a descriptor (``Append(Offset(input, -1), input)``) into Kaldi's normal form."""
    toks = re.findall(r"[(),]|[^\s(),]+", text)
    pos = 0

    def bad(msg: str) -> KaldiFormatError:
        return KaldiFormatError(f"descriptor {text!r}: {msg}")

    def take(expect: str | None = None) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise bad("unexpected end" + (f", expected {expect!r}" if expect else ""))
        t, pos = toks[pos], pos + 1
        if expect is not None and t != expect:
            raise bad(f"expected {expect!r}, got {t!r}")
        return t

    def integer() -> int:
        t = take()
        if not re.fullmatch(r"[+-]?\d+", t):
            raise bad(f"expected an integer, got {t!r}")
        return int(t)

    def real() -> float:
        t = take()
        try:
            return float(np.float32(float(t)))
        except ValueError:
            raise bad(f"expected a number, got {t!r}") from None

    def parse() -> Descriptor:
        t = take()
        if t not in _OPS:
            if not _NAME_RE.match(t):
                raise bad(f"expected a node name or expression, got {t!r}")
            return Descriptor("node", (), (t,))
        take("(")
        if t == "Scale":
            alpha = real()
            take(",")
            d = Descriptor(t, (parse(),), (alpha,))
        elif t == "Const":
            value = real()
            take(",")
            dim = integer()
            if dim <= 0:
                raise bad("Const() needs a positive dimension")
            d = Descriptor(t, (), (value, dim))
        elif t in ("Append", "Sum", "Switch", "Failover", "IfDefined"):
            args = [parse()]
            while toks[pos:pos + 1] == [","]:
                take(",")
                args.append(parse())
            if (t == "Failover" and len(args) != 2) or (t == "IfDefined" and len(args) != 1):
                raise bad(f"wrong number of arguments to {t}()")
            d = Descriptor(t, tuple(args))
        else:
            child = parse()
            take(",")
            if t == "ReplaceIndex":
                var = take()
                if var not in ("t", "x"):
                    raise bad(f"expected 't' or 'x' in ReplaceIndex(), got {var!r}")
                take(",")
                d = Descriptor(t, (child,), (var, integer()))
            elif t == "Round":
                d = Descriptor(t, (child,), (integer(),))
            else:  # Offset(x, t[, x])
                dt = integer()
                dx = 0
                if toks[pos:pos + 1] == [","]:
                    take(",")
                    dx = integer()
                d = Descriptor(t, (child,), (dt, dx))
        take(")")
        return d

    tree = parse()
    if pos != len(toks):
        raise bad(f"unexpected {toks[pos]!r} after the end")
    terms = _append_terms(tree, bad)
    tree = terms[0] if len(terms) == 1 else Descriptor("Append", tuple(terms))
    while (nxt := _normalize(tree, bad)) != tree:
        tree = nxt
    return tree


def _append_terms(d: Descriptor, bad) -> list[Descriptor]:
    """Kaldi's NormalizeAppend: Append moves to the top, e.g. Offset(Append(a, b), 1)."""
    if d.op in ("node", "Const"):
        return [d]
    if d.op == "Append":
        return [t for a in d.args for t in _append_terms(a, bad)]
    per_arg = [_append_terms(a, bad) for a in d.args]
    if len({len(p) for p in per_arg}) != 1:
        raise bad(f"arguments of {d.op}() have different numbers of Append() terms")
    return [Descriptor(d.op, tuple(p[i] for p in per_arg), d.params) for i in range(len(per_arg[0]))]


def _normalize(d: Descriptor, bad) -> Descriptor:
    """One top-down pass of Kaldi's GeneralDescriptor::Normalize; repeat until unchanged."""
    op, args, p = d.op, d.args, d.params
    child = args[0] if args else None
    if op == "Offset" and child.op == "Offset":
        return Descriptor("Offset", child.args, (p[0] + child.params[0], p[1] + child.params[1]))
    if op == "Offset" and p == (0, 0):
        return child
    if op in ("Offset", "Switch", "Round", "ReplaceIndex") and child.op in ("Sum", "Failover", "IfDefined"):
        if len(args) > 1:
            raise bad("Sum(), Failover() or IfDefined() inside Switch() cannot be normalized")
        return Descriptor(child.op, tuple(Descriptor(op, (g,), p) for g in child.args), child.params)
    if op == "Sum" and len(args) == 1:
        return child
    if op == "Sum" and len(args) > 2:
        return Descriptor("Sum", (args[0], Descriptor("Sum", args[1:])))
    if op == "Scale":
        if child.op in ("Offset", "ReplaceIndex", "Round"):
            return Descriptor(child.op, (Descriptor("Scale", child.args, p),), child.params)
        if child.op == "Sum":
            return Descriptor("Sum", tuple(Descriptor("Scale", (g,), p) for g in child.args))
        if child.op == "Scale":
            return Descriptor("Scale", child.args, (float(np.float32(p[0] * child.params[0])),))
        if child.op != "node":
            raise bad(f"cannot normalize Scale() of {child.op}(); push Scale() inside it")
        if p[0] == 1.0:
            return child
    if op == "Const" or op == "node":
        return d
    return Descriptor(op, tuple(_normalize(a, bad) for a in args), p)


def descriptor_append_offsets(node: str, offsets: list[int], ivector: str | None = None) -> str:
    """``Append(Offset(node, -1), node, Offset(node, 1)[, ReplaceIndex(ivector, t, 0)])`` as Kaldi writes it."""
    if not offsets:
        raise ValueError("descriptor_append_offsets: need at least one offset")
    parts = [node if o == 0 else f"Offset({node}, {int(o)})" for o in offsets]
    if ivector is not None:
        parts.append(f"ReplaceIndex({ivector}, t, 0)")
    return parts[0] if len(parts) == 1 else f"Append({', '.join(parts)})"


# ----------------------------------------------------------------------------- config lines
_NODE_KEYS = {"input-node": ("name", "dim"), "component-node": ("name", "component", "input"),
              "output-node": ("name", "input", "objective", "dim"),
              "dim-range-node": ("name", "input-node", "dim-offset", "dim")}


@dataclass
class Node:
    """One config line: ``kind`` is input-node, component-node, output-node or dim-range-node."""

    kind: str
    name: str
    attrs: dict[str, str]
    desc: Descriptor | None = None

    def line(self) -> str:
        """Kaldi's Nnet::GetAsConfigLine (include_dim=false)."""
        a = self.attrs
        if self.kind == "input-node":
            return f"input-node name={self.name} dim={a['dim']}"
        if self.kind == "component-node":
            return f"component-node name={self.name} component={a['component']} input={self.desc}"
        if self.kind == "output-node":
            return f"output-node name={self.name} input={self.desc} objective={a.get('objective', 'linear')}"
        return (f"dim-range-node name={self.name} input-node={a['input-node']} "
                f"dim-offset={a['dim-offset']} dim={a['dim']}")


def parse_config_line(line: str) -> Node:
    """One config line -> node; ``key=value`` pairs, a value running on to the next ``key=``."""
    words = line.split()
    if not words or words[0] not in _NODE_KEYS:
        raise KaldiFormatError(f"config line {line!r}: expected input-node, component-node, output-node "
                               f"or dim-range-node")
    kind, attrs, last = words[0], {}, None
    for w in words[1:]:
        k, eq, v = w.partition("=")
        if eq and _NAME_RE.match(k) and "(" not in k:
            if k in attrs:
                raise KaldiFormatError(f"config line {line!r}: {k}= given twice")
            attrs[k], last = v, k
        elif last is not None:
            attrs[last] += " " + w
        else:
            raise KaldiFormatError(f"config line {line!r}: expected key=value, got {w!r}")
    allowed = _NODE_KEYS[kind]
    unknown = [k for k in attrs if k not in allowed]
    optional = ("objective", "dim") if kind == "output-node" else ()
    missing = [k for k in allowed if k not in attrs and k not in optional]
    if unknown or missing:
        raise KaldiFormatError(f"config line {line!r}: " + (f"unknown {', '.join(unknown)}" if unknown else
                                                            f"missing {', '.join(missing)}"))
    name = attrs.pop("name")
    if not is_valid_node_name(name):
        raise KaldiFormatError(f"config line {line!r}: invalid node name {name!r}")
    for k in ("dim", "dim-offset"):
        if k in attrs and not re.fullmatch(r"\d+", attrs[k]):
            raise KaldiFormatError(f"config line {line!r}: {k} must be a non-negative integer")
    if attrs.get("objective", "linear") not in ("linear", "quadratic"):
        raise KaldiFormatError(f"config line {line!r}: objective must be linear or quadratic")
    desc = parse_descriptor(attrs["input"]) if "input" in attrs else None
    return Node(kind, name, attrs, desc)
