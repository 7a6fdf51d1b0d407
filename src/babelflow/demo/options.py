"""Options of the demo corpus step (``params.yaml`` ``demo:``)."""

from __future__ import annotations

from dataclasses import dataclass

from ..options import StepOptions, option

SIZES = {"default": 200, "large": 2000}  # utterances per language


@dataclass
class DemoOptions(StepOptions):
    """``params.yaml`` ``demo:`` -> ``babelflow demo-corpus`` (used when ``data.dirs`` is empty)."""

    SECTION = "demo"
    size: str = option("default", choices=tuple(SIZES), help="default: 200 utts/lang; large: 2000 utts/lang")
    utts_per_lang: int | None = option(None, help="overrides size")
    low_resource: dict[str, int] = option(default_factory=dict,
                                          help="language -> training utterances, fewer than the others' (the "
                                               "low-resource targets of lowres.tasks)")
    langs: dict[str, str] = option(default_factory=lambda: {"en": "en-us", "de": "de", "es": "es", "fr": "fr"},
                                   help="our language name -> espeak-ng voice name")
    voices: list[str] = option(default_factory=lambda: ["m1", "m2", "m3", "m5", "f1", "f2", "f3", "f4"],
                               help="espeak voice variants (the speakers)")
    test_utts_per_lang: int = option(40, help="a test set per language: held-out voices, new texts (0: none)")
    test_voices: list[str] = option(default_factory=lambda: ["m4", "f5"], help="the test set's speakers")
    test_snr_db: list[float] = option(default_factory=lambda: [15.0, 35.0],
                                      help="the test set's signal-to-noise range, dB (training: 15-35)")
    seed: int = 0
    ali_jobs: int = option(2, help="ali.N.gz files per language")
    ali: str = option("synth", choices=("synth", "auto"), cli=False,
                      help="the frame tasks' alignments: synth (the synthesiser's timings) | auto (GMM, lexicon)")
    utterance_tasks: list[str] = option(default_factory=lambda: ["lang", "voice", "gender", "rate"], cli=False,
                                        help="the demo's utterance tasks (lang, voice, gender, rate)")

    @property
    def num_utts(self) -> int:
        return self.utts_per_lang or SIZES[self.size]

    def utts_of(self, lang: str) -> int:
        """Training utterances of ``lang``: its ``low_resource`` count, else every language's."""
        return int(self.low_resource.get(lang, self.num_utts))
