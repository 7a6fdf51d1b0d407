"""Synthesise the demo corpus: per language a Kaldi data dir and a Kaldi alignment dir.

Frame labels come from espeak-ng's own phoneme events (not a re-alignment), cut to the
Kaldi frame grid (25 ms window, 10 ms shift, snip-edges: frame i is labelled with the
phone under its window centre), with every phone lasting at least 3 frames as a real
3-state forced alignment would. Each language is generated in one fresh process from
a fixed sequence of requests, because espeak's output depends on earlier calls in the
process; with that, a seed fully determines the corpus.
"""

from __future__ import annotations

import gzip
import multiprocessing
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from ..errors import BabelflowError
from ..io import atomic_dir, write_table, write_text
from .espeak import PITCH, RANGE, RATE, Espeak
from .lexicon import write_language_lexicon
from .options import DemoOptions

SAMPLE_RATE = 16000
FRAME_LENGTH, FRAME_SHIFT = 400, 160  # samples at 16 kHz: Kaldi's 25 ms / 10 ms
MIN_PHONE_FRAMES = 3  # one frame per state of the 3-state topology
RATE_CLASSES = {"slow": (110, 140), "normal": (160, 190), "fast": (220, 260)}
DEFAULT = DemoOptions()


@dataclass
class DemoConfig:
    """What to synthesise. ``langs`` maps our language name to an espeak voice name."""

    langs: dict[str, str] = field(default_factory=lambda: dict(DEFAULT.langs))
    voices: list[str] = field(default_factory=lambda: list(DEFAULT.voices))
    utts_per_lang: int = DEFAULT.num_utts
    low_resource: dict[str, int] = field(default_factory=dict)  # language -> its (fewer) training utterances
    test_voices: list[str] = field(default_factory=lambda: list(DEFAULT.test_voices))
    test_utts_per_lang: int = DEFAULT.test_utts_per_lang
    seed: int = 0
    ali_jobs: int = 2
    snr_db: tuple[float, float] = (15.0, 35.0)
    test_snr_db: tuple[float, float] = tuple(DEFAULT.test_snr_db)  # a harder test condition, when lower


@dataclass
class Utterance:
    utt: str
    voice: str
    gender: str
    rate: str
    text: str
    num_samples: int
    frame_phones: list[str]  # espeak phone name (or "sil") per frame


def _utterance_text(rng: random.Random) -> str:
    """Numbers, written as digits: espeak verbalises them per language, so no lexicon is needed."""
    if rng.random() < 0.5:
        return " ".join(str(rng.randrange(10)) for _ in range(rng.randint(2, 4)))
    return " ".join(str(rng.randrange(rng.choice([100, 1000]))) for _ in range(rng.randint(1, 2)))


def frame_labels(spans: list[tuple[str, int, int]], num_samples: int) -> list[str]:
    """Phone under each frame's window centre; pauses (``_``, ``_:``...) and gaps are ``sil``."""
    num_frames = 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT if num_samples >= FRAME_LENGTH else 0
    centres = np.arange(num_frames) * FRAME_SHIFT + FRAME_LENGTH // 2
    labels = ["sil"] * num_frames
    starts = np.array([s for _, s, _ in spans])
    for i, c in enumerate(centres):
        k = int(np.searchsorted(starts, c, side="right")) - 1
        if k >= 0 and c < spans[k][2] and not spans[k][0].startswith("_"):
            labels[i] = spans[k][0]
    return labels


def enforce_min_duration(labels: list[str], min_frames: int = MIN_PHONE_FRAMES) -> list[tuple[str, int]]:
    """Turn frame labels into (phone, length) runs, each at least ``min_frames`` long.

    A short run borrows frames from its longer neighbour(s); if they cannot spare any
    it is absorbed by the longer neighbour (as a forced aligner would skip it).
    """
    runs: list[list] = []
    for lab in labels:
        if runs and runs[-1][0] == lab:
            runs[-1][1] += 1
        else:
            runs.append([lab, 1])
    if sum(n for _, n in runs) < min_frames:
        raise ValueError("utterance shorter than one phone")
    while True:
        short = [i for i, r in enumerate(runs) if r[1] < min_frames]
        if not short:
            return [(p, n) for p, n in runs]
        i = short[0]
        need = min_frames - runs[i][1]
        donors = sorted((j for j in (i - 1, i + 1) if 0 <= j < len(runs)), key=lambda j: -runs[j][1])
        for j in donors:
            take = min(max(runs[j][1] - min_frames, 0), need)
            runs[j][1] -= take
            runs[i][1] += take
            need -= take
        if need > 0:
            runs[donors[0]][1] += runs[i][1]
            del runs[i]
            merged: list[list] = []
            for r in runs:
                if merged and merged[-1][0] == r[0]:
                    merged[-1][1] += r[1]
                else:
                    merged.append(r)
            runs = merged


def _synthesise_one(engine: Espeak, lang: str, voice_name: str, i: int, cfg: DemoConfig, wav_dir: Path,
                    part: str = "", vocab: list[str] | None = None) -> Utterance:
    """Utterance ``i`` of the training part (``part=""``) or of the test part (``"test"``: held-out voices,
    texts drawn from the training vocabulary, so new word sequences but no unknown words)."""
    from scipy.signal import resample_poly

    rng = random.Random(f"{cfg.seed}-{lang}-{part}{i}")
    voices = cfg.test_voices if part else cfg.voices
    voice = voices[i % len(voices)]
    rate = rng.choice(sorted(RATE_CLASSES))
    text = _utterance_text(rng) if vocab is None else " ".join(rng.choice(vocab) for _ in range(rng.randint(2, 4)))
    params = {RATE: rng.randint(*RATE_CLASSES[rate]), PITCH: rng.randint(25, 75), RANGE: rng.randint(20, 80)}
    # numbers read as a list: "313 681" alone would be one number with a thousands separator in de/fr
    audio, spans = engine.synth(", ".join(text.split()), f"{voice_name}+{voice}", params)
    ratio = (320, 441) if engine.sample_rate == 22050 else (SAMPLE_RATE, engine.sample_rate)
    speech = resample_poly(audio.astype(np.float32), *ratio).astype(np.float32)
    spans = [(p, s * ratio[0] // ratio[1], e * ratio[0] // ratio[1]) for p, s, e in spans]
    nrng = np.random.default_rng(rng.getrandbits(63))
    lead, trail = (int(rng.uniform(0.05, 0.3) * SAMPLE_RATE) for _ in range(2))
    sig = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    spans = [(p, s + lead, e + lead) for p, s, e in spans]
    power = float(np.mean(speech**2)) + 1e-9
    snr = rng.uniform(*(cfg.test_snr_db if part else cfg.snr_db))
    sig = sig + nrng.standard_normal(len(sig)).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
    sig *= 10 ** (rng.uniform(-8.0, 0.0) / 20)
    pcm = np.clip(np.round(sig), -32768, 32767).astype(np.int16)
    utt = f"{voice}-{lang}-{part}{i:05d}"
    sf.write(wav_dir / f"{utt}.wav", pcm, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return Utterance(utt, voice, voice[0], rate, text, len(pcm), frame_labels(spans, len(pcm)))


def _phone_inventory(utts: list[Utterance]) -> list[str]:
    """``sil`` first (id 1), then the language's espeak phones in C sort order."""
    phones = sorted({p for u in utts for p in u.frame_phones} - {"sil"})
    return ["sil"] + phones


def generate_language(lang: str, out_dir: str | os.PathLike, cfg: DemoConfig, progress: bool = True) -> dict:
    """Write ``out_dir/{wav,data,ali,dict,test}`` for one language; returns a summary.

    The final paths in ``wav.scp`` are those under ``out_dir`` (which is built under a
    temporary name and renamed when complete).
    """
    from ..kaldi.alignments import write_int_vectors
    from ..kaldi.transition_model import TransitionModel, write_transition_model
    from ..kaldi.tree import tree_from_topology, write_tree

    if lang not in cfg.langs:
        raise BabelflowError(f"demo: unknown language '{lang}' (configured: {', '.join(cfg.langs)})")
    out_dir = Path(out_dir)
    engine = Espeak.get()
    with atomic_dir(out_dir) as tmp:
        (tmp / "wav").mkdir()
        utts = [
            _synthesise_one(engine, lang, cfg.langs[lang], i, cfg, tmp / "wav")
            for i in tqdm(range(cfg.low_resource.get(lang, cfg.utts_per_lang)), desc=f"demo {lang}",
                          disable=not progress, unit="utt")
        ]
        utts.sort(key=lambda u: u.utt)
        vocab = sorted({w for u in utts for w in u.text.split()})
        test = sorted((_synthesise_one(engine, lang, cfg.langs[lang], i, cfg, tmp / "wav", "test", vocab)
                       for i in range(cfg.test_utts_per_lang)), key=lambda u: u.utt)
        if test:
            _write_data_dir(tmp / "test", out_dir / "wav", lang, test)
        write_language_lexicon(tmp / "dict" / "lexicon.txt", [u.text for u in utts], cfg.langs[lang], engine)
        _write_data_dir(tmp / "data", out_dir / "wav", lang, utts)
        phones = _phone_inventory(utts)
        phone_id = {p: k + 1 for k, p in enumerate(phones)}
        tm = TransitionModel.monophone(len(phones))
        ali_dir = tmp / "ali"
        write_transition_model(ali_dir / "final.mdl", tm)
        write_tree(ali_dir / "tree", tree_from_topology(tm.topology))  # what gmm-init-mono writes beside it
        write_table(ali_dir / "phones.txt", [("<eps>", 0)] + [(p, k) for p, k in phone_id.items()])
        write_text(ali_dir / "num_jobs", f"{cfg.ali_jobs}\n")
        chunks = np.array_split(np.arange(len(utts)), cfg.ali_jobs)
        for job, idx in enumerate(chunks, 1):
            items = [(utts[k].utt, transition_ids(tm, enforce_min_duration(utts[k].frame_phones), phone_id))
                     for k in idx]
            raw = ali_dir / f"ali.{job}.raw"
            write_int_vectors(f"ark:{raw}", items)
            with open(raw, "rb") as src, open(ali_dir / f"ali.{job}.gz", "wb") as out, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as dst:  # byte-reproducible
                dst.write(src.read())
            raw.unlink()
    return {"lang": lang, "num_utts": len(utts), "num_phones": len(phones), "num_pdfs": tm.num_pdfs,
            "hours": sum(u.num_samples for u in utts) / SAMPLE_RATE / 3600}


def transition_ids(tm, runs: list[tuple[str, int]], phone_id: dict[str, int]) -> np.ndarray:
    """Kaldi transition-id per frame: each phone run split into 3 equal states; in each
    state the self-loop is taken on all frames but the last, which takes the forward arc."""
    out = []
    for name, length in runs:
        p = phone_id[name]
        bounds = [round(s * length / 3) for s in range(4)]
        for s in range(3):
            n = bounds[s + 1] - bounds[s]
            out += [tm.transition_id(p, s, s)] * (n - 1) + [tm.transition_id(p, s, s + 1)]
    return np.asarray(out, dtype=np.int32)


def _write_data_dir(data: Path, wav_dir: Path, lang: str, utts: list[Utterance]) -> None:
    write_table(data / "wav.scp", [(u.utt, wav_dir / f"{u.utt}.wav") for u in utts])
    write_table(data / "text", [(u.utt, u.text) for u in utts])
    write_table(data / "utt2spk", [(u.utt, u.voice) for u in utts])
    spk2utt: dict[str, list[str]] = {}
    for u in utts:
        spk2utt.setdefault(u.voice, []).append(u.utt)
    write_table(data / "spk2utt", [(s, " ".join(us)) for s, us in sorted(spk2utt.items())])
    write_table(data / "spk2gender", sorted({(u.voice, u.gender) for u in utts}))
    for name, value in [("lang", lambda u: lang), ("voice", lambda u: u.voice), ("gender", lambda u: u.gender),
                        ("rate", lambda u: u.rate), ("dur", lambda u: f"{u.num_samples / SAMPLE_RATE:.3f}")]:
        write_table(data / f"utt2{name}", [(u.utt, value(u)) for u in utts])


def _generate_star(args: tuple) -> dict:
    return generate_language(*args)


def generate_corpus(out_root: str | os.PathLike, cfg: DemoConfig, langs: list[str] | None = None,
                    jobs: int = 1) -> list[dict]:
    """Generate ``out_root/<lang>`` for each language, one fresh process per language."""
    langs = langs or list(cfg.langs)
    work = [(lang, Path(out_root) / lang, cfg, jobs == 1) for lang in langs]
    if jobs == 1 and len(langs) == 1 and Espeak._instance is None:
        return [generate_language(*work[0])]  # this process has a fresh espeak state
    ctx = multiprocessing.get_context("spawn")  # a fresh espeak state per language
    with ctx.Pool(min(jobs, len(langs)), maxtasksperchild=1) as pool:
        return pool.map(_generate_star, work, chunksize=1)
