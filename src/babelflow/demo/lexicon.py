"""The demo corpus's lexicons: each word's phones as espeak-ng speaks it, in the alignment dirs' phone set.

Training alignments from scratch needs a lexicon whose phones are those of the demo's
reference alignment dirs, so that the two can be compared frame by frame. Those dirs label
frames with espeak's own phoneme events, so the lexicon takes the same events from
synthesising each word alone with the language's voice (pauses dropped, as
``frame_labels`` maps them to ``sil``). In running speech espeak may change a word
(liaison, lenition, reduction), so a word's isolated pronunciation can differ from what
its frames are labelled with inside an utterance.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ..errors import BabelflowError
from ..io import write_text
from .espeak import PITCH, RANGE, RATE, Espeak

# Fixed, neutral settings (espeak's defaults): the engine keeps the last utterance's rate and
# pitch otherwise, and the phones must not depend on what was synthesised before.
ISOLATED_PARAMS = {RATE: 175, PITCH: 50, RANGE: 50}
OOV_ENTRY = ("<unk>", ("sil",))


def word_phones(word: str, voice: str, engine: Espeak | None = None) -> tuple[str, ...]:
    """The phones espeak-ng speaks for ``word`` alone with ``voice`` (pauses ``_...`` dropped)."""
    engine = engine or Espeak.get()
    _, spans = engine.synth(word, voice, ISOLATED_PARAMS)
    return tuple(p for p, _, _ in spans if not p.startswith("_"))


def demo_lexicon(words: Iterable[str], voice: str, engine: Espeak | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """``(word, phones)`` for each distinct word, in C sort order; deterministic (fixed voice settings)."""
    out = []
    for word in sorted(set(words)):
        phones = word_phones(word, voice, engine)
        if not phones:
            raise BabelflowError(f"demo lexicon: espeak-ng voice '{voice}' speaks no phones for the word '{word}'")
        out.append((word, phones))
    return out


def write_lexicon(path: str | os.PathLike, entries: Iterable[tuple[str, Sequence[str]]]) -> None:
    """Write a Kaldi ``lexicon.txt`` (``word phone...`` per line), atomically."""
    write_text(path, "".join(f"{word} {' '.join(phones)}\n" for word, phones in entries))


def write_language_lexicon(path: str | os.PathLike, texts: Iterable[str], voice: str,
                           engine: Espeak | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """The lexicon of every word in ``texts`` plus ``<unk> sil`` (the OOV word prepare_lang needs), sorted."""
    entries = sorted([*demo_lexicon((w for t in texts for w in t.split()), voice, engine), OOV_ENTRY])
    write_lexicon(path, entries)
    return entries
