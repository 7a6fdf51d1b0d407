"""N-gram language models (ARPA) and the grammar FST G, as Kaldi recipes make them.

``make_lm`` estimates a back-off Kneser-Ney model with the ``kaldingram`` package, a port of
Kaldi's ``make_kn_lm.py`` that matches SRILM's ``ngram-count -ukndiscount
-kn-modify-counts-at-end -gtNmin 0`` (it is pure Python and works offline). Two guards are
added around it: an order whose counts-of-counts give a discount of 1 (no n-gram seen
twice, where SRILM refuses) gets discount 0.5 instead of giving every singleton probability
0; and a context that saw every word its back-off distribution covers is renormalised (no
back-off mass left) rather than losing that mass. With a vocabulary, other words become the
OOV word (``<unk>``), as Kaldi's LM scripts do; vocabulary words absent from the text get no
probability (unigrams are not discounted), so G cannot emit them.

``arpa_to_g`` is Kaldi's ``arpa2fst --disambig-symbol=#0 --read-symbol-table=words.txt``:
kaldilm's port, plus the redundant-state removal that Kaldi's arpa2fst does and kaldilm's
does not, so that G matches Kaldi's arc for arc.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BabelflowError, where
from ..io import read_lines, write_text

__all__ = ["make_lm", "read_arpa", "ArpaLM", "arpa_to_g"]

log = logging.getLogger("babelflow")
_SPECIAL = ("<s>", "</s>")


@dataclass
class ArpaLM:
    """An ARPA back-off LM: ``ngrams[n - 1]`` maps each n-gram (a tuple of words) to (log10 prob, log10 bow)."""

    ngrams: list[dict[tuple[str, ...], tuple[float, float]]] = field(default_factory=list)

    @property
    def order(self) -> int:
        return len(self.ngrams)

    @property
    def vocab(self) -> list[str]:
        return [w for (w,) in self.ngrams[0]] if self.ngrams else []

    def logprob(self, history: Sequence[str], word: str) -> float:
        """log10 P(word | history) by the back-off rule (-inf for a word the model does not have)."""
        h = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        bow = 0.0
        while True:
            entry = self.ngrams[len(h)].get((*h, word))
            if entry is not None:
                return bow + entry[0]
            if not h:
                return -np.inf
            bow += self.ngrams[len(h) - 1].get(h, (0.0, 0.0))[1]
            h = h[1:]


def _arpa_records(path: Path) -> Iterator[tuple[int, tuple[str, ...], float, float]]:
    """Stream an ARPA file as (order, words, log10 prob, log10 bow), checking its layout and ``\\data\\``
    counts as it goes (errors name the file and line): kaldilm aborts the process on a malformed file."""
    counts: list[int] = []
    seen: list[int] = []
    section = None
    try:
        with open(path, encoding="utf-8") as f:
            for n, raw in enumerate(f, 1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = "data"
                elif line == "\\end\\":
                    break
                elif line.startswith("\\") and line.endswith("-grams:"):
                    order = int(line[1:-7]) if line[1:-7].isdigit() else 0
                    if order != len(seen) + 1 or order > len(counts):
                        raise BabelflowError(f"{where(path, n)}: unexpected section {line}")
                    seen.append(0)
                    section = "ngrams"
                elif section == "data" and line.startswith("ngram "):
                    k, _, c = line[6:].partition("=")
                    if not (k.strip().isdigit() and c.strip().isdigit()) or int(k) != len(counts) + 1:
                        raise BabelflowError(f"{where(path, n)}: bad count line '{line}'")
                    counts.append(int(c))
                elif section == "ngrams":
                    fields, order = line.split(), len(seen)
                    if len(fields) not in (order + 1, order + 2):
                        raise BabelflowError(f"{where(path, n)}: expected a log-prob, {order} word(s) and an "
                                             "optional back-off weight")
                    try:
                        lp, bow = float(fields[0]), float(fields[order + 1]) if len(fields) > order + 1 else 0.0
                    except ValueError:
                        raise BabelflowError(f"{where(path, n)}: not a number in '{line}'") from None
                    seen[-1] += 1
                    yield order, tuple(fields[1:order + 1]), lp, bow
                else:
                    raise BabelflowError(f"{where(path, n)}: unexpected line (not an ARPA file?)")
    except FileNotFoundError:
        raise BabelflowError(f"{path}: ARPA LM not found") from None
    except UnicodeDecodeError as e:
        raise BabelflowError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not seen or seen != counts:
        raise BabelflowError(f"{path}: n-gram counts {seen} do not match the header {counts}")


def read_arpa(path: str | os.PathLike) -> ArpaLM:
    """Parse an ARPA file, checking the ``\\data\\`` counts (errors name the file and line)."""
    lm = ArpaLM()
    for order, words, lp, bow in _arpa_records(Path(path)):
        while len(lm.ngrams) < order:
            lm.ngrams.append({})
        lm.ngrams[order - 1][words] = (lp, bow)
    return lm


def _read_vocab(vocab: str | os.PathLike | Iterable[str]) -> tuple[set[str], str | None]:
    """(words, the lang dir's OOV word or None) from a lang dir, a words.txt or an iterable of words."""
    if not isinstance(vocab, (str, os.PathLike)):
        return set(vocab), None
    path = Path(vocab)
    oov = None
    if path.is_dir():
        oov = (path / "oov.txt").read_text().split()[0] if (path / "oov.txt").is_file() else None
        path = path / "words.txt"
    words = {line.split()[0] for line in read_lines(path, "word list") if line.split()}
    return words - {"<eps>", "#0", *_SPECIAL}, oov


def _sentences(text: str | os.PathLike | Iterable[str], has_keys: bool | None) -> list[tuple[object, int, list[str]]]:
    if isinstance(text, (str, os.PathLike)):
        src: object = text
        lines = read_lines(text, "text")
        has_keys = True if has_keys is None else has_keys
    else:
        src, lines, has_keys = "<text>", list(text), bool(has_keys)
    return [(src, n, line.split()[1 if has_keys else 0:]) for n, line in enumerate(lines, 1)]


def _renormalise_full_contexts(counts) -> None:
    """Where a context has seen every word of its back-off distribution, make its probabilities sum to one
    (kaldingram would drop the discounted mass: there is nothing left to back off to)."""
    for k in range(1, counts.ngram_order):
        for hist, cfh in counts.counts[k].items():
            lower = counts.counts[k - 1][hist[1:]]
            covered = sum(lower.word_to_f.get(w, 0.0) for w in cfh.word_to_count)
            if 1.0 - covered < 1e-6:
                total = sum(cfh.word_to_f.values())
                if total > 0.0:
                    cfh.word_to_f = {w: f / total for w, f in cfh.word_to_f.items()}


def _clear_full_context_bows(counts) -> None:
    for k in range(1, counts.ngram_order):
        for hist, cfh in counts.counts[k].items():
            lower = counts.counts[k - 1][hist[1:]]
            if 1.0 - sum(lower.word_to_f.get(w, 0.0) for w in cfh.word_to_count) < 1e-6:
                counts.counts[k - 1][hist[:-1]].word_to_bow[hist[-1]] = None


def make_lm(text: str | os.PathLike | Iterable[str], order: int, out_arpa: str | os.PathLike, *,
            has_keys: bool | None = None, vocab: str | os.PathLike | Iterable[str] | None = None,
            unk: str | None = None) -> dict:
    """Write a back-off Kneser-Ney ARPA LM of ``order`` (>= 2) estimated on ``text``.

    ``text``: a file (a Kaldi ``text``, utterance key first, unless ``has_keys=False``) or an iterable of
    sentences (no keys unless ``has_keys=True``); empty transcripts are skipped. ``vocab``: a lang dir, a
    words.txt or words; other words become ``unk`` (default: the lang dir's oov.txt, else ``<unk>``).
    Returns counts: sentences, tokens, oov_tokens, ngrams per order, discounts.
    """
    from kaldingram.train import NgramCounts

    if order < 2:
        raise BabelflowError(f"make-lm: order must be at least 2, got {order}")
    words, lang_oov = _read_vocab(vocab) if vocab is not None else (None, None)
    unk = unk or lang_oov or "<unk>"
    if words is not None and unk not in words:
        raise BabelflowError(f"make-lm: the OOV word '{unk}' is not in the vocabulary {vocab}")
    counts = NgramCounts(order)
    num_sent = num_tok = num_oov = 0
    for src, n, toks in _sentences(text, has_keys):
        bad = [t for t in toks if t in _SPECIAL]
        if bad:
            raise BabelflowError(f"{where(src, n)}: '{bad[0]}' is reserved (sentence boundaries are implicit)")
        if not toks:
            continue
        if words is not None:
            num_oov += sum(t not in words for t in toks)
            toks = [t if t in words else unk for t in toks]
        counts.add_raw_counts_from_line(" ".join(toks))
        num_sent, num_tok = num_sent + 1, num_tok + len(toks)
    if num_sent == 0:
        raise BabelflowError(f"make-lm: no sentences in {text if isinstance(text, (str, os.PathLike)) else 'text'}")
    buf = io.StringIO()
    with contextlib.redirect_stderr(io.StringIO()):  # kaldingram's progress bars
        counts.cal_discounting_constants()
        for n in range(1, order):
            if counts.d[n] >= 1.0:
                log.warning("make-lm: no %d-gram is seen twice; using discount 0.5 for that order", n + 1)
                counts.d[n] = 0.5
        counts.cal_f()
        _renormalise_full_contexts(counts)
        counts.cal_bow()
        _clear_full_context_bows(counts)
        counts.print_as_arpa(buf)
    write_text(out_arpa, buf.getvalue())
    return {"sentences": num_sent, "tokens": num_tok, "oov_tokens": num_oov,
            "ngrams": [sum(len(c.word_to_f) for c in counts.counts[k].values()) for k in range(order)],
            "discounts": [round(float(d), 6) for d in counts.d]}


@contextlib.contextmanager
def _captured_fd2():
    """Collect what C++ code writes to stderr (kaldilm's [I]/[W] lines) instead of letting it through."""
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        saved = os.dup(2)
        out: list[str] = []
        try:
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.extend(tmp.read().decode("utf-8", "replace").splitlines())


def arpa_to_g(arpa: str | os.PathLike, words_txt: str | os.PathLike, out_fst: str | os.PathLike | None = None,
              disambig_symbol: str = "#0", bos: str = "<s>", eos: str = "</s>"):
    """G.fst from an ARPA LM, as ``arpa2fst --disambig-symbol=#0 --read-symbol-table=words.txt``: back-off arcs
    carry ``#0`` on the input, ``<s>``/``</s>`` become the start state and final weights, n-grams with words not
    in words.txt are skipped (logged), and states left with just a back-off arc are bypassed. Ilabel-sorted;
    written to ``out_fst`` if given. Returns the kaldifst StdVectorFst."""
    from ..gmm.k2 import kaldifst  # noqa: I001 - first: importing kaldilm before the k2-fsa modules hangs
    import kaldilm

    from .fstio import arrays_to_fst, fst_to_arrays, read_fst, write_fst
    from .fstops import remove_eps_local

    arpa, words_txt = Path(arpa), Path(words_txt)
    for p, what in ((arpa, "ARPA LM"), (words_txt, "words.txt")):
        if not p.is_file():
            raise BabelflowError(f"{p}: {what} not found")
    table = {f[0]: int(f[1]) for f in (line.split() for line in read_lines(words_txt, "words.txt")) if len(f) == 2}
    for sym in (disambig_symbol, bos, eos):
        if sym not in table:
            raise BabelflowError(f"{words_txt}: has no '{sym}' (needed by arpa2fst)")
    has_bos = False
    for order, words, _, _ in _arpa_records(arpa):  # the whole file: kaldilm aborts on a malformed one
        has_bos |= order == 1 and words == (bos,)
    if not has_bos:
        raise BabelflowError(f"{arpa}: no unigram '{bos}' (arpa2fst needs the sentence start)")
    with tempfile.TemporaryDirectory(prefix="babelflow-g-") as d:
        with _captured_fd2() as messages:
            kaldilm.arpa2fst(input_arpa=str(arpa), output_fst=f"{d}/G.fst", disambig_symbol=disambig_symbol,
                             read_symbol_table=str(words_txt), bos_symbol=bos, eos_symbol=eos, max_arpa_warnings=-1)
        skipped = [m for m in messages if "skipped" in m]
        if skipped:
            log.warning("arpa2fst %s: %d n-grams skipped, e.g. %s", arpa, len(skipped), skipped[0].split("] ")[-1])
        if not os.path.isfile(f"{d}/G.fst"):
            raise BabelflowError(f"{arpa}: arpa2fst failed: {' '.join(m for m in messages if '[I]' not in m)}")
        g = read_fst(f"{d}/G.fst")
    # Kaldi's ArpaLmCompiler::RemoveRedundantStates: a non-final state whose only arc is the back-off gets
    # an epsilon there, and local epsilon removal bypasses it.
    a = fst_to_arrays(g)
    off = a.offsets()
    one_arc = (np.diff(off) == 1) & ~np.isfinite(a.final)
    idx = off[:-1][one_arc]
    ilabel = a.ilabel.copy()
    ilabel[idx[a.ilabel[idx] == table[disambig_symbol]]] = 0
    g = remove_eps_local(arrays_to_fst(a.replace(ilabel=ilabel)), stochastic_in_log=False)
    kaldifst.arcsort(g, sort_type="ilabel")
    if g.start < 0:
        raise BabelflowError(f"{arpa}: G is empty (no '{bos}' in the ARPA file?)")
    if out_fst is not None:
        write_fst(g, out_fst)
    return g
