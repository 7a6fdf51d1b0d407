"""Scoring as Kaldi does it: compute-wer, align-text + wer_per_utt_details.pl / wer_per_spk_details.pl, best_wer.sh,
and steps/score_kaldi.sh's layout around them.

Outputs are byte-compatible with Kaldi's, because recipes and people grep them
(``grep WER exp/*/decode*/wer_* | utils/best_wer.sh``). Edit distances are kaldialign's port
of Kaldi's LevenshteinEditDistance / LevenshteinAlignment, so ins/del/sub counts break ties as
Kaldi does.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_open, write_text
from .lattice import WordLattice

EPS = "***"  # score_kaldi.sh's --special-symbol for align-text and the details scripts


@dataclass
class WerStats:
    """compute-wer's counters."""

    words: int = 0
    errors: int = 0
    ins: int = 0
    dels: int = 0
    subs: int = 0
    sents: int = 0
    sent_errors: int = 0
    absent: int = 0

    @property
    def wer(self) -> float:
        return _percent(self.errors, self.words)

    @property
    def ser(self) -> float:
        return _percent(self.sent_errors, self.sents)

    def format(self) -> str:
        """compute-wer's stdout, three lines."""
        return (f"%WER {_fixed2(self.wer)} [ {self.errors} / {self.words}, {self.ins} ins, {self.dels} del, "
                f"{self.subs} sub ]{' [PARTIAL]' if self.absent else ''}\n"
                f"%SER {_fixed2(self.ser)} [ {self.sent_errors} / {self.sents} ]\n"
                f"Scored {self.sents} sentences, {self.absent} not present in hyp.\n")


def _percent(num: int, den: int) -> float:
    """100 * num / den computed in double and stored as float, as compute-wer's BaseFloat does (0/0 is NaN)."""
    if den == 0:
        return math.nan if num == 0 else math.inf
    return float(np.float32(100.0 * num / den))


def _fixed2(x: float) -> str:
    """``std::fixed << setprecision(2)``; glibc prints 0/0 (the x86 default NaN, sign bit set) as -nan."""
    if math.isnan(x):
        return "-nan"
    return "inf" if math.isinf(x) else f"{x:.2f}"


# ----------------------------------------------------------------------------- tables
def _table_path(spec: str | os.PathLike) -> str:
    """The file of a text rspecifier (``ark:f``, ``ark,t:f``, ``ark,p:f``, or a plain path; ``-`` is stdin)."""
    spec = os.fspath(spec)
    m = re.match(r"^(ark|scp)(,[a-z]+)*:(.*)$", spec)
    if m and m.group(1) == "scp":
        raise BabelflowError(f"'{spec}': scp text tables are not supported (give the ark)")
    path = m.group(3) if m else spec
    if path.rstrip().endswith("|"):
        raise BabelflowError(f"'{spec}': piped rspecifiers are not supported")
    return path


def read_text(spec: str | os.PathLike, integers: bool = False) -> dict[str, list[str]]:
    """A Kaldi text table (``data/text``, a hypothesis file): key -> tokens, file order. ``integers``: tokens must
    be integers (compute-wer without ``--text``) and compare as numbers."""
    path = _table_path(spec)
    lines = sys.stdin.read().splitlines() if path == "-" else Path(path).read_text(encoding="utf-8").splitlines()
    out: dict[str, list[str]] = {}
    for n, line in enumerate(lines, 1):
        toks = line.split()
        if not toks:
            raise BabelflowError(f"{path}:{n}: empty line in a text table")
        if integers:
            try:
                toks[1:] = [str(int(t)) for t in toks[1:]]
            except ValueError:
                raise BabelflowError(f"{path}:{n}: non-integer token (use --text)") from None
        if toks[0] in out:
            raise BabelflowError(f"{path}:{n}: duplicate key '{toks[0]}'")
        out[toks[0]] = toks[1:]
    return out


def format_hyps(hyps: Mapping[str, Sequence[str]]) -> str:
    """lattice-best-path | int2sym.pl output: ``key w1 w2 `` (every token followed by a space)."""
    return "".join(f"{k} " + "".join(f"{w} " for w in ws) + "\n" for k, ws in hyps.items())


# ----------------------------------------------------------------------------- WER
def edit_counts(ref: Sequence[str], hyp: Sequence[str]) -> tuple[int, int, int]:
    """(ins, del, sub) of Kaldi's LevenshteinEditDistance."""
    import kaldialign

    if not ref or not hyp:  # kaldialign needs no special case here, but this is the common one
        return len(hyp), len(ref), 0
    d = kaldialign.edit_distance(ref, hyp)
    return d["ins"], d["del"], d["sub"]


def compute_wer(ref: Mapping[str, Sequence[str]], hyp: Mapping[str, Sequence[str]], mode: str = "present",
                stats_out: list[str] | None = None) -> WerStats:
    """compute-wer --text --mode=MODE: ``present`` skips utterances without a hypothesis, ``all`` scores them
    as empty, ``strict`` fails. ``stats_out`` collects the optional per-word alignment lines."""
    if mode not in ("present", "all", "strict"):
        raise BabelflowError(f"--mode option invalid: expected \"present\"|\"all\"|\"strict\", got {mode}")
    st = WerStats()
    for key, r in ref.items():
        h = hyp.get(key)
        if h is None:
            if mode == "strict":
                raise BabelflowError(f"No hypothesis for key {key} and strict mode specifier.")
            st.absent += 1
            if mode == "present":
                continue
            h = []
        ins, dels, subs = edit_counts(r, h)
        st.words += len(r)
        st.errors += ins + dels + subs
        st.ins, st.dels, st.subs = st.ins + ins, st.dels + dels, st.subs + subs
        st.sents += 1
        st.sent_errors += list(r) != list(h)
        if stats_out is not None:
            stats_out += [_stat_line(a, b) for a, b in align(r, h, "")]
    return st


def _stat_line(r: str, h: str) -> str:
    """compute-wer's stats-out line (Kaldi prints the empty hypothesis word after "deletion")."""
    if not r:
        return f"insertion {h}"
    if not h:
        return "deletion "
    return f"substitution {r} {h}" if r != h else f"correct {r}"


def align(ref: Sequence[str], hyp: Sequence[str], eps: str = EPS) -> list[tuple[str, str]]:
    """align-text's pairs (Kaldi's LevenshteinAlignment); ``eps`` marks insertions and deletions."""
    import kaldialign

    if not ref and not hyp:
        return []
    return [(a, b) for a, b in kaldialign.align(list(ref), list(hyp), eps)]


def per_utt_details(ref: Mapping[str, Sequence[str]], hyp: Mapping[str, Sequence[str]], eps: str = EPS) -> str:
    """align-text | wer_per_utt_details.pl: ref/hyp/op rows, each column centred to its widest cell, and #csid
    counts; utterances without a hypothesis are left out, as align-text does."""
    out = []
    for key, r in ref.items():
        if key not in hyp:
            continue
        cols = []
        counts = dict.fromkeys("CSID", 0)
        for a, b in align(r, hyp[key], eps):
            op = "D" if b == eps else "I" if a == eps else "S" if a != b else "C"
            counts[op] += 1
            width = max(len(a), len(b), 1)
            cols.append(tuple(_centre(x, width) for x in (a, b, op)))
        for i, name in enumerate(("ref  ", "hyp  ", "op   ")):
            out.append(f"{key} {name}" + "  ".join(c[i] for c in cols))
        out.append(f"{key} #csid {counts['C']} {counts['S']} {counts['I']} {counts['D']}")
    return "".join(line + "\n" for line in out)


def _centre(s: str, width: int) -> str:
    right = (width - len(s)) // 2
    return " " * (width - len(s) - right) + s + " " * right


def per_spk_details(per_utt: str, utt2spk: Mapping[str, str]) -> str:
    """wer_per_spk_details.pl: raw counts and percentages per speaker (sorted) and their SUM."""
    width = max([15] + [len(s) for s in utt2spk.values()])
    stats: dict[str, list[int]] = {}
    for line in per_utt.splitlines():
        f = line.split()
        if len(f) == 6 and f[1] == "#csid":
            c, s, i, d = (int(x) for x in f[2:])
            row = stats.setdefault(utt2spk.get(f[0], ""), [0] * 6)
            for j, v in enumerate((c, s, i, d, 1, int(s + i + d != 0))):
                row[j] += v
    head = f"{'SPEAKER':<{width}} id  " + " ".join(f"{x:>10}" for x in (
        "#SENT", "#WORD", "Corr", "Sub", "Ins", "Del", "Err", "S.Err"))
    lines = [head]
    total = [0] * 6
    for spk in [*sorted(stats), "SUM"]:
        c, s, i, d, sent, serr = stats[spk] if spk != "SUM" else total
        if spk != "SUM":
            total = [a + b for a, b in zip(total, stats[spk])]
        word, err = c + s + d, s + d + i
        lines.append(f"{spk:<{width}} raw " + " ".join(f"{x:10d}" for x in (sent, word, c, s, i, d, err, serr)))
        if word:
            pct = [100 * x / word for x in (c, s, i, d, err)] + [100.0 * serr / sent]
            lines.append(f"{spk:<{width}} sys {sent:10d} {word:10d} " + " ".join(f"{x:10.2f}" for x in pct))
    return "".join(line + "\n" for line in lines)


def best_wer(wer_lines: Iterable[tuple[str, str]]) -> str:
    """utils/best_wer.sh over (file name, its %WER line) in the given order: the first lowest WER wins,
    printed as ``%WER ... <file>``."""
    best = None
    for name, line in wer_lines:
        m = re.search(r"[WS]ER (\S+)", line)
        if m and (best is None or float(m.group(1)) < best[0]):
            best = (float(m.group(1)), f"{line.strip()} {name}")
    if best is None:
        raise BabelflowError("best_wer: no %WER lines")
    return re.sub(r"\s+", " ", best[1]) + "\n"


# ----------------------------------------------------------------------------- score_kaldi.sh
def score_dir(decode_dir: str | os.PathLike, ref: Mapping[str, Sequence[str]],
              hyps: Mapping[tuple[int, str], Mapping[str, Sequence[str]]], utt2spk: Mapping[str, str]) -> dict:
    """steps/score_kaldi.sh's files from per-(LMWT, WIP) hypotheses: ``scoring_kaldi/test_filt.txt``,
    ``scoring_kaldi/penalty_<wip>/<lmwt>.txt``, ``wer_<lmwt>_<wip>``, ``scoring_kaldi/best_wer`` and
    ``scoring_kaldi/wer_details/{lmwt,wip,per_utt,per_spk}``. Returns the best (lmwt, wip) and its stats."""
    d = Path(decode_dir)
    sk = d / "scoring_kaldi"
    write_text(sk / "test_filt.txt", format_hyps(ref))
    wips = list(dict.fromkeys(w for _, w in hyps))
    results, lines = {}, []
    for wip in wips:  # score_kaldi.sh's loop order, which decides ties in best_wer.sh
        for lmwt in sorted(lm for lm, w in hyps if w == wip):
            h = hyps[(lmwt, wip)]
            write_text(sk / f"penalty_{wip}" / f"{lmwt}.txt", format_hyps(h))
            st = compute_wer(ref, h, "present")
            write_text(d / f"wer_{lmwt}_{wip}", st.format())
            results[(lmwt, wip)] = st
            lines.append((f"{d}/wer_{lmwt}_{wip}", st.format().splitlines()[0]))
    best_line = best_wer(lines)
    write_text(sk / "best_wer", best_line)
    name = best_line.split()[-1].rsplit("/", 1)[-1]
    lmwt, wip = int(name.split("_")[1]), name.split("_")[2]
    details = sk / "wer_details"
    write_text(details / "lmwt", f"{lmwt}\n")
    write_text(details / "wip", f"{wip}\n")
    per_utt = per_utt_details(ref, hyps[(lmwt, wip)])
    write_text(details / "per_utt", per_utt)
    write_text(details / "per_spk", per_spk_details(per_utt, utt2spk))
    return {"lmwt": lmwt, "wip": wip, "stats": results[(lmwt, wip)], "best_wer": best_line.strip()}


def read_scored_hyps(decode_dir: str | os.PathLike) -> dict[tuple[int, str], dict[str, list[str]]]:
    """The hypotheses of an earlier scoring (``scoring_kaldi/penalty_<wip>/<lmwt>.txt``), to rescore them."""
    out = {}
    for p in sorted(Path(decode_dir).glob("scoring_kaldi/penalty_*/*.txt")):
        if p.stem.isdigit():
            out[(int(p.stem), p.parent.name[len("penalty_"):])] = read_text(p)
    return out


def write_stats(path: str | os.PathLike, lines: list[str]) -> None:
    with atomic_open(path, "w") as f:
        f.writelines(line + "\n" for line in lines)


# ----------------------------------------------------------------------------- lattices as text
def format_lattice(key: str, lat: WordLattice) -> str:
    """Kaldi's text CompactLattice (``lattice-copy ark,t:``) with empty alignments: graph and unscaled acoustic
    costs, so that score.sh's lattice-scale | lattice-add-penalty | lattice-best-path can read it."""
    lines = [f"{key} "]
    for s, arcs in enumerate(lat.arcs):
        lines += [f"{s}\t{t}\t{w}\t{g:.6g},{a:.6g}," for w, t, g, a in arcs]
        if lat.finals[s] is not None:
            lines.append(f"{s}\t{lat.finals[s][0]:.6g},{lat.finals[s][1]:.6g},")
    return "\n".join(lines) + "\n\n"


def parse_lattices(text: str, where: str = "lattices") -> Iterator[tuple[str, WordLattice]]:
    """Text lattices (CompactLattice ``s t word g,a,ali`` or Lattice ``s t tid word g,a`` arcs, ``s g,a`` finals)
    as word lattices, renumbered so that the start (the first line's state) is 0."""
    for block in re.split(r"\n\s*\n", text.strip()):
        rows = [ln.split() for ln in block.splitlines() if ln.strip()]
        if not rows:
            continue
        key, body = rows[0][0], rows[1:]
        if len(rows[0]) != 1 or any(len(r) not in (1, 2, 4, 5) for r in body):
            raise BabelflowError(f"{where}: '{key}' is not a text lattice")
        ids: dict[str, int] = {}
        for r in body:
            for s in (r[0], r[1]) if len(r) > 2 else (r[0],):
                ids.setdefault(s, len(ids))
        arcs: list[list] = [[] for _ in ids]
        finals: list = [None] * len(ids)
        for r in body:
            g, a = (float(x) for x in (r[-1].split(",")[:2] if len(r) > 1 else ("0", "0")))
            if len(r) > 2:
                arcs[ids[r[0]]].append((int(r[2] if len(r) == 4 else r[3]), ids[r[1]], g, a))
            else:
                finals[ids[r[0]]] = (g, a)
        yield key, WordLattice(arcs, finals)


def read_lattices(decode_dir: str | os.PathLike) -> dict[str, WordLattice]:
    """Every ``lat.*.gz`` of a decode dir (text lattices, as ``babelflow decode`` writes them)."""
    out = {}
    for p in sorted(Path(decode_dir).glob("lat.*.gz")):
        data = gzip.decompress(p.read_bytes())
        if b"\0B" in data[:4096]:
            raise BabelflowError(f"{p}: binary Kaldi lattices; convert them with lattice-copy to ark,t first")
        out.update(parse_lattices(data.decode("utf-8"), str(p)))
    return out
