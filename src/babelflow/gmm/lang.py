"""Kaldi lang dirs from a lexicon, as ``utils/prepare_lang.sh`` makes them, without Kaldi.

GMM training and graph building need phones.txt/words.txt, the ``phones/`` lists, ``topo``
and the lexicon FSTs with Kaldi's exact ids and disambiguation symbols, so that models and
graphs stay interchangeable with real Kaldi ones. Each step mirrors the Kaldi script it
replaces (add_lex_disambig.pl, gen_topo.pl, make_lexicon_fst.py, fstaddselfloops); on the
fixture lang dir the outputs are identical to Kaldi's, L.fst/L_disambig.fst byte for byte.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from ..errors import BabelflowError, where
from ..io import atomic_dir, read_lines, write_text
from .k2 import kaldifst

__all__ = ["LexiconEntry", "LangDir", "read_lexicon", "prepare_lang", "gen_topo"]

_RESERVED_WORDS = ("<eps>", "<s>", "</s>", "#0")
_POSITIONS = ("_B", "_E", "_I", "_S")


class LexiconEntry(NamedTuple):
    word: str
    prob: float  # pronunciation probability (1.0 in a plain lexicon.txt)
    phones: tuple[str, ...]


def read_lexicon(path: str | os.PathLike, with_probs: bool | None = None) -> list[LexiconEntry]:
    """Read ``word phone...`` (lexicon.txt) or ``word prob phone...`` (lexiconp.txt).

    As in prepare_lang.sh, the file name decides the format (``lexiconp*`` has probabilities)
    unless ``with_probs`` says otherwise. Lines are validated as validate_dict_dir.pl does.
    """
    path = Path(path)
    if with_probs is None:
        with_probs = path.name.startswith("lexiconp")
    lines = read_lines(path, "lexicon")
    entries = []
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            raise BabelflowError(f"{where(path, n)}: empty lexicon line")
        word, rest, prob = fields[0], fields[1:], 1.0
        if with_probs:
            try:
                prob = float(rest[0])
            except (IndexError, ValueError):
                raise BabelflowError(f"{where(path, n, word)}: the 2nd field must be a pronunciation probability "
                                     "(a lexiconp file); name a plain lexicon lexicon.txt") from None
            rest = rest[1:]
        entries.append(LexiconEntry(word, prob, tuple(rest)))
    _check_entries(entries, path)
    return entries


def _check_entries(entries: Sequence[LexiconEntry], src: object) -> None:
    """validate_dict_dir.pl's lexicon rules; entry ``i`` is reported as line ``i + 1``."""
    seen = set()
    for n, (word, prob, phones) in enumerate(entries, 1):
        if not 0.0 < prob <= 1.0:
            raise BabelflowError(f"{where(src, n, word)}: pronunciation probability {prob} not in (0, 1]")
        if word in _RESERVED_WORDS:
            raise BabelflowError(f"{where(src, n, word)}: '{word}' is reserved and cannot be a lexicon word")
        if not phones:
            raise BabelflowError(f"{where(src, n, word)}: empty pronunciation")
        for p in phones:
            if p.startswith("#") or p == "<eps>":
                raise BabelflowError(f"{where(src, n, word)}: phone '{p}' is reserved (disambiguation/epsilon)")
        if (word, phones) in seen:
            raise BabelflowError(f"{where(src, n, word)}: duplicate lexicon entry")
        seen.add((word, phones))


def _position_dependent(e: LexiconEntry) -> LexiconEntry:
    p = e.phones
    if len(p) == 1:
        return e._replace(phones=(p[0] + "_S",))
    return e._replace(phones=(p[0] + "_B", *(x + "_I" for x in p[1:-1]), p[-1] + "_E"))


def _add_lex_disambig(entries: Sequence[LexiconEntry]) -> tuple[list[LexiconEntry], int]:
    """add_lex_disambig.pl: ``#1, #2...`` after homophones and prefixes; returns the highest used."""
    count: dict[tuple[str, ...], int] = {}
    prefixes = set()
    for e in entries:
        count[e.phones] = count.get(e.phones, 0) + 1
        prefixes.update(e.phones[:k] for k in range(len(e.phones)))
    last: dict[tuple[str, ...], int] = {}
    out, max_disambig = [], 0
    for e in entries:
        if count[e.phones] == 1 and e.phones not in prefixes:
            out.append(e)
            continue
        last[e.phones] = k = last.get(e.phones, 0) + 1
        max_disambig = max(max_disambig, k)
        out.append(e._replace(phones=(*e.phones, f"#{k}")))
    return out, max_disambig


def gen_topo(num_nonsil_states: int, num_sil_states: int, nonsil: Sequence[int], sil: Sequence[int]) -> str:
    """utils/gen_topo.pl's text, byte for byte: left-to-right phones; silence fully connected inside."""
    if not 1 <= num_nonsil_states <= 100:
        raise BabelflowError(f"num_nonsil_states must be in 1..100, got {num_nonsil_states}")
    if not (num_sil_states == 1 or 3 <= num_sil_states <= 100):
        raise BabelflowError(f"num_sil_states must be 1 or in 3..100, got {num_sil_states}")
    n, s = num_nonsil_states, num_sil_states
    out = ["<Topology>", "<TopologyEntry>", "<ForPhones>", " ".join(map(str, nonsil)), "</ForPhones>"]
    out += [f"<State> {k} <PdfClass> {k} <Transition> {k} 0.75 <Transition> {k + 1} 0.25 </State>" for k in range(n)]
    out += [f"<State> {n} </State>", "</TopologyEntry>", "<TopologyEntry>", "<ForPhones>",
            " ".join(map(str, sil)), "</ForPhones>"]
    if s > 1:
        p = f"{1.0 / (s - 1):.15g}"  # as Perl prints a number
        out.append("<State> 0 <PdfClass> 0 " + "".join(f"<Transition> {d} {p} " for d in range(s - 1)) + "</State>")
        for k in range(1, s - 1):
            out.append(f"<State> {k} <PdfClass> {k} " + "".join(f"<Transition> {d} {p} " for d in range(1, s))
                       + "</State>")
        out.append(f"<State> {s - 1} <PdfClass> {s - 1} <Transition> {s - 1} 0.75 <Transition> {s} 0.25 </State>")
    else:
        out.append("<State> 0 <PdfClass> 0 <Transition> 0 0.25 <Transition> 1 0.75 </State>")
    out += [f"<State> {s} </State>", "</TopologyEntry>", "</Topology>"]
    return "\n".join(out) + "\n"


def _lexicon_fst(entries: Sequence[LexiconEntry], phones: dict[str, int], words: dict[str, int], sil_prob: float,
                 sil_phone: str, sil_disambig: str | None = None) -> kaldifst.StdVectorFst:
    """make_lexicon_fst.py + fstcompile + fstarcsort (olabel), with its state numbering and costs."""
    arcs: list[tuple[int, int, str, str, float]] = []
    if sil_prob == 0.0:
        loop, next_state = 0, 1
        sil_state = None
    else:
        sil_cost, no_sil_cost = -math.log(sil_prob), -math.log(1.0 - sil_prob)
        loop, sil_state, next_state = 1, 2, 3
        arcs += [(0, loop, "<eps>", "<eps>", no_sil_cost), (0, sil_state, "<eps>", "<eps>", sil_cost)]
        if sil_disambig is None:
            arcs.append((sil_state, loop, sil_phone, "<eps>", 0.0))
        else:
            arcs += [(sil_state, next_state, sil_phone, "<eps>", 0.0), (next_state, loop, sil_disambig, "<eps>", 0.0)]
            next_state += 1
    for word, prob, pron in entries:
        cost, cur = -math.log(prob), loop
        for i, p in enumerate(pron[:-1]):
            arcs.append((cur, next_state, p, word if i == 0 else "<eps>", cost if i == 0 else 0.0))
            cur, next_state = next_state, next_state + 1
        single = len(pron) == 1
        last_word, last_cost = (word, cost) if single else ("<eps>", 0.0)
        if sil_state is None:
            arcs.append((cur, loop, pron[-1], last_word, last_cost))
        else:
            arcs.append((cur, loop, pron[-1], last_word, no_sil_cost + last_cost))
            arcs.append((cur, sil_state, pron[-1], last_word, sil_cost + last_cost))
    fst = kaldifst.StdVectorFst()
    for _ in range(next_state):
        fst.add_state()
    fst.start = 0
    fst.set_final(loop, 0.0)
    for src, dst, p, w, cost in arcs:
        fst.add_arc(src, kaldifst.StdArc(phones[p], words[w], cost, dst))
    kaldifst.arcsort(fst, sort_type="olabel")
    return fst


def prepare_lang(lexicon: str | os.PathLike | Sequence[LexiconEntry | tuple[str, Sequence[str]]],
                 lang_dir: str | os.PathLike, sil_phone: str = "sil", oov_word: str = "<unk>",
                 position_dependent_phones: bool = False, num_sil_states: int = 3, num_nonsil_states: int = 3,
                 sil_prob: float = 0.5, nonsilence_phones: Sequence[str] | None = None,
                 add_oov: bool = False) -> LangDir:
    """Write a Kaldi lang dir from a lexicon (path or entries), as utils/prepare_lang.sh does.

    The one silence phone ``sil_phone`` is also the optional silence. ``nonsilence_phones``
    gives the lines of a dict dir's nonsilence_phones.txt (phones sharing a tree root on
    one line, space-separated), which fixes phone ids; default: the lexicon's other phones
    in C sort order. The OOV word must be in the lexicon, as Kaldi requires, unless
    ``add_oov`` adds ``<oov_word> <sil_phone>``.
    """
    if isinstance(lexicon, (str, os.PathLike)):
        src: object = lexicon
        entries = read_lexicon(lexicon)
    else:
        src = "<lexicon>"
        entries = [LexiconEntry(*e) if len(e) == 3 else LexiconEntry(e[0], 1.0, tuple(e[1])) for e in lexicon]
        entries = [e._replace(phones=tuple(e.phones)) for e in entries]
        _check_entries(entries, src)
    if not 0.0 <= sil_prob < 1.0:
        raise BabelflowError(f"sil_prob must be in [0, 1), got {sil_prob}")
    if nonsilence_phones is None:
        nonsil_lines = [[p] for p in sorted({p for e in entries for p in e.phones} - {sil_phone})]
    else:
        nonsil_lines = [line.split() for line in nonsilence_phones if line.split()]
    flat = [p for line in nonsil_lines for p in line]
    if len(set(flat)) != len(flat) or sil_phone in flat:
        raise BabelflowError(f"nonsilence phones must be unique and exclude the silence phone '{sil_phone}'")
    known = set(flat) | {sil_phone}
    for n, e in enumerate(entries, 1):
        for p in e.phones:
            if p not in known:
                raise BabelflowError(f"{where(src, n, e.word)}: phone '{p}' is not in the phone lists")
    if oov_word not in {e.word for e in entries}:
        if not add_oov:
            raise BabelflowError(f"{src}: the OOV word '{oov_word}' is not in the lexicon (Kaldi requires it): "
                                 f"add a line '{oov_word} {sil_phone}', or add_oov (--add-oov)")
        entries.insert(0, LexiconEntry(oov_word, 1.0, (sil_phone,)))
    gen_topo(num_nonsil_states, num_sil_states, [1, 2], [3])  # validate the state counts before writing

    def variants(p: str, silence: bool) -> list[str]:  # prepare_lang's phone_map.txt
        if not position_dependent_phones:
            return [p]
        return ([p] if silence else []) + [p + s for s in _POSITIONS]

    if position_dependent_phones:
        entries = [_position_dependent(e) for e in entries]
    sets = [[v for p in [sil_phone] for v in variants(p, True)]]
    sets += [[v for p in line for v in variants(p, False)] for line in nonsil_lines]
    silence, nonsilence = sets[0], [p for s in sets[1:] for p in s]
    extra_questions: list[str] = []
    if position_dependent_phones:
        extra_questions = ["".join(f"{p}{s} " for p in flat) for s in _POSITIONS]
        extra_questions += [f"{sil_phone}{s} " for s in ("", *_POSITIONS)]
    disambig_entries, ndisambig = _add_lex_disambig(entries)
    ndisambig += 1  # one more for the optional silence
    disambig = [f"#{k}" for k in range(ndisambig + 1)]
    phones = {p: k for k, p in enumerate(["<eps>", *silence, *nonsilence, *disambig])}
    vocab = sorted({e.word for e in entries})
    words = {w: k for k, w in enumerate(["<eps>", *vocab, "#0", "<s>", "</s>"])}

    def ints(syms: Sequence[str]) -> str:  # utils/sym2int.pl
        return " ".join(str(phones[p]) for p in syms)

    with atomic_dir(lang_dir) as tmp:
        (tmp / "phones").mkdir()
        write_text(tmp / "phones.txt", "".join(f"{p} {k}\n" for p, k in phones.items()))
        write_text(tmp / "words.txt", "".join(f"{w} {k}\n" for w, k in words.items()))
        lists = {"silence": silence, "nonsilence": nonsilence, "optional_silence": [sil_phone],
                 "disambig": disambig, "context_indep": silence}
        for name, syms in lists.items():
            write_text(tmp / "phones" / f"{name}.txt", "".join(f"{p}\n" for p in syms))
            write_text(tmp / "phones" / f"{name}.int", "".join(f"{phones[p]}\n" for p in syms))
            write_text(tmp / "phones" / f"{name}.csl", ":".join(str(phones[p]) for p in syms) + "\n")
        write_text(tmp / "phones" / "sets.txt", "".join(" ".join(s) + "\n" for s in sets))
        write_text(tmp / "phones" / "sets.int", "".join(ints(s) + "\n" for s in sets))
        write_text(tmp / "phones" / "roots.txt", "".join(f"shared split {' '.join(s)}\n" for s in sets))
        write_text(tmp / "phones" / "roots.int", "".join(f"shared split {ints(s)}\n" for s in sets))
        write_text(tmp / "phones" / "extra_questions.txt", "".join(q + "\n" for q in extra_questions))
        write_text(tmp / "phones" / "extra_questions.int", "".join(ints(q.split()) + "\n" for q in extra_questions))
        write_text(tmp / "phones" / "wdisambig.txt", "#0\n")
        write_text(tmp / "phones" / "wdisambig_phones.int", f"{phones['#0']}\n")
        write_text(tmp / "phones" / "wdisambig_words.int", f"{words['#0']}\n")
        align = sorted({f"{e.word} {e.word} {' '.join(e.phones)}" for e in entries} | {f"<eps> <eps> {sil_phone}"})
        write_text(tmp / "phones" / "align_lexicon.txt", "".join(a + "\n" for a in align))
        align_int = [a.split() for a in align]
        write_text(tmp / "phones" / "align_lexicon.int",
                   "".join(f"{words[a[0]]} {words[a[1]]} {ints(a[2:])}\n" for a in align_int))
        if position_dependent_phones:
            kinds = {"_B": "begin", "_E": "end", "_I": "internal", "_S": "singleton"}
            bounds = [(p, kinds.get(p[-2:], "nonword")) for p in [*silence, *nonsilence]]
            write_text(tmp / "phones" / "word_boundary.txt", "".join(f"{p} {k}\n" for p, k in bounds))
            write_text(tmp / "phones" / "word_boundary.int", "".join(f"{phones[p]} {k}\n" for p, k in bounds))
        write_text(tmp / "oov.txt", f"{oov_word}\n")
        write_text(tmp / "oov.int", f"{words[oov_word]}\n")
        topo = gen_topo(num_nonsil_states, num_sil_states, [phones[p] for p in nonsilence],
                        [phones[p] for p in silence])
        write_text(tmp / "topo", topo)
        _lexicon_fst(entries, phones, words, sil_prob, sil_phone).write(str(tmp / "L.fst"))
        ld = _lexicon_fst(disambig_entries, phones, words, sil_prob, sil_phone, disambig[-1])
        kaldifst.add_self_loops(ld, [phones["#0"]], [words["#0"]])  # fstaddselfloops wdisambig_{phones,words}
        kaldifst.arcsort(ld, sort_type="olabel")
        ld.write(str(tmp / "L_disambig.fst"))
    return LangDir(lang_dir)


def _read_symbols(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise BabelflowError(f"{path}: file not found (not a lang dir?)")
    out = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise BabelflowError(f"{where(path, n, fields[0] if fields else None)}: expected 'symbol integer-id'")
        out[fields[0]] = int(fields[1])
    return out


def _read_int_lines(path: Path, skip: int = 0) -> list[list[int]]:
    if not path.is_file():
        raise BabelflowError(f"{path}: file not found (not a lang dir?)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        try:
            out.append([int(x) for x in line.split()[skip:]])
        except ValueError:
            raise BabelflowError(f"{where(path, n)}: expected integer ids") from None
    return out


def _phone_list(name: str, doc: str) -> cached_property:
    """A ``phones/<name>.int`` list as a lazily read property."""
    prop = cached_property(lambda self: [i for line in _read_int_lines(self.path / "phones" / name) for i in line])
    prop.__doc__ = doc
    return prop


class LangDir:
    """A Kaldi lang dir (ours or Kaldi's): symbol tables, phone lists, topology, lexicon FSTs, read on demand."""

    silence_phones = _phone_list("silence.int", "Silence phone ids (phones/silence.int).")
    nonsilence_phones = _phone_list("nonsilence.int", "Non-silence phone ids (phones/nonsilence.int).")
    disambig_phones = _phone_list("disambig.int", "Disambiguation symbols #0, #1... as phone ids.")
    context_indep_phones = _phone_list("context_indep.int", "Phones the tree must not split on context.")
    wdisambig_phones = _phone_list("wdisambig_phones.int", "The word-level #0 as a phone id (for L_disambig).")
    wdisambig_words = _phone_list("wdisambig_words.int", "The word-level #0 as a word id.")

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / "phones.txt").is_file():
            raise BabelflowError(f"{self.path}: not a lang dir (no phones.txt)")

    @cached_property
    def phones(self) -> dict[str, int]:
        return _read_symbols(self.path / "phones.txt")

    @cached_property
    def words(self) -> dict[str, int]:
        return _read_symbols(self.path / "words.txt")

    @cached_property
    def phone_names(self) -> dict[int, str]:
        return {i: p for p, i in self.phones.items()}

    @cached_property
    def word_names(self) -> dict[int, str]:
        return {i: w for w, i in self.words.items()}

    @cached_property
    def optional_silence(self) -> int:
        return _read_int_lines(self.path / "phones" / "optional_silence.int")[0][0]

    @cached_property
    def sets(self) -> list[list[int]]:
        """phones/sets.int: the phone groups that share a monophone/tree root."""
        return _read_int_lines(self.path / "phones" / "sets.int")

    @cached_property
    def roots(self) -> list[tuple[str, str, list[int]]]:
        """phones/roots.int as (shared|not-shared, split|not-split, phones): the tree's roots."""
        path = self.path / "phones" / "roots.int"
        heads = [line.split()[:2] for line in path.read_text().splitlines()] if path.is_file() else []
        return [(h[0], h[1], p) for h, p in zip(heads, _read_int_lines(path, 2))]

    @cached_property
    def extra_questions(self) -> list[list[int]]:
        path = self.path / "phones" / "extra_questions.int"
        return _read_int_lines(path) if path.is_file() else []

    @cached_property
    def oov(self) -> int:
        return _read_int_lines(self.path / "oov.int")[0][0]

    @property
    def oov_word(self) -> str:
        return (self.path / "oov.txt").read_text().split()[0]

    @property
    def topo_path(self) -> Path:
        return self.path / "topo"

    @property
    def position_dependent(self) -> bool:
        return (self.path / "phones" / "word_boundary.int").is_file()

    def load_fst(self, name: str) -> kaldifst.StdVectorFst:
        """Read ``<lang>/<name>`` (a VectorFst, e.g. L.fst or G.fst); a fresh copy on every call."""
        path = self.path / name
        if not path.is_file():
            raise BabelflowError(f"{path}: file not found")
        return kaldifst.StdVectorFst.read(str(path))

    @cached_property
    def L(self) -> kaldifst.StdVectorFst:  # noqa: N802 - Kaldi's name
        return self.load_fst("L.fst")

    @cached_property
    def L_disambig(self) -> kaldifst.StdVectorFst:  # noqa: N802 - Kaldi's name
        return self.load_fst("L_disambig.fst")
