"""Read and validate Kaldi data directories, following ``utils/validate_data_dir.sh``.

The checks stop at the first problem and name the file, line and key, because a data dir
is usually produced by a user script and the fix is an edit to one specific line.  Sort
order is C-locale byte order; Python's ``str`` ordering on code points gives exactly that
for UTF-8 text, so plain ``<`` comparisons are used.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BabelflowError, where
from ..io import read_table, write_table
from .audio import MAX_OVERSHOOT, rooted_wav_value

_UTT2_RE = re.compile(r"^utt2([A-Za-z0-9_]+)$")
# utt2<x> files that are not labels: kept verbatim in DataDir.extra (utt2spk has its own field).
_EXTRA = ("utt2dur", "utt2num_frames", "utt2uniq")
_KNOWN = {"wav.scp", "segments", "utt2spk", "spk2utt", "text", "spk2gender"}
_ILLEGAL_TEXT = {"<s>", "</s>", "#0"}  # reserved symbols in Kaldi graphs

Row = tuple[int, str, list[str]]


@dataclass
class DataDir:
    """An in-memory Kaldi data dir; dict orders are file orders (sorted once validated)."""

    path: Path
    wav: dict[str, str]  # rec-id -> path or pipe command ("... |")
    utt2spk: dict[str, str]
    spk2utt: dict[str, list[str]]
    segments: dict[str, tuple[str, float, float]] | None
    text: dict[str, str] | None
    labels: dict[str, dict[str, str]]  # "lang" -> utt -> label, from utt2lang etc.
    spk2gender: dict[str, str] | None = None
    extra: dict[str, dict[str, str]] = field(default_factory=dict)  # "utt2dur" -> utt -> value

    @property
    def utts(self) -> list[str]:
        return sorted(self.utt2spk)

    @classmethod
    def load(cls, path: str | Path, check_audio: bool = True, root: str | Path | None = None) -> DataDir:
        """Parse and validate ``path``; raises :class:`BabelflowError` on the first problem. ``root``: the
        folder ``wav.scp``'s relative paths and pipes are relative to (default: the working directory)."""
        return _load(Path(path), check_audio, root)[0]

    def with_audio_root(self, root: str | Path | None) -> DataDir:
        """The same data dir with ``wav.scp`` independent of the working directory (``rooted_wav_value``)."""
        from dataclasses import replace

        return replace(self, wav={r: rooted_wav_value(v, root) for r, v in self.wav.items()}) if root else self

    def subset(self, utts: Iterable[str]) -> DataDir:
        """The data dir restricted to ``utts`` (file order kept), as ``filter_scps.pl`` would."""
        keep = set(utts)
        utt2spk = {u: s for u, s in self.utt2spk.items() if u in keep}
        spks = set(utt2spk.values())
        segments = None
        if self.segments is not None:
            segments = {u: v for u, v in self.segments.items() if u in keep}
            recs = {v[0] for v in segments.values()}
            wav = {r: p for r, p in self.wav.items() if r in recs}
        else:
            wav = {r: p for r, p in self.wav.items() if r in keep}

        def per_utt(d: dict[str, str]) -> dict[str, str]:
            return {u: v for u, v in d.items() if u in keep}

        return DataDir(
            path=self.path,
            wav=wav,
            utt2spk=utt2spk,
            spk2utt=utt2spk_to_spk2utt(utt2spk),
            segments=segments,
            text=per_utt(self.text) if self.text is not None else None,
            labels={k: per_utt(v) for k, v in self.labels.items()},
            spk2gender=({s: g for s, g in self.spk2gender.items() if s in spks}
                        if self.spk2gender is not None else None),
            extra={k: per_utt(v) for k, v in self.extra.items()},
        )

    def write(self, out_dir: str | Path) -> None:
        """Write every table (each file atomically, keys sorted); drop stale optional files."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_table(out / "wav.scp", sorted(self.wav.items()))
        write_table(out / "utt2spk", sorted(self.utt2spk.items()))
        write_table(out / "spk2utt", [(s, *us) for s, us in sorted(self.spk2utt.items())])
        optional: dict[str, list[tuple[str, ...]] | None] = {
            "segments": None if self.segments is None else [
                (u, r, repr(b), repr(e)) for u, (r, b, e) in sorted(self.segments.items())],
            "text": None if self.text is None else [
                (u, t) if t else (u,) for u, t in sorted(self.text.items())],
            "spk2gender": None if self.spk2gender is None else sorted(self.spk2gender.items()),
        }
        for name, table in [*((f"utt2{k}", v) for k, v in self.labels.items()), *self.extra.items()]:
            optional[name] = sorted(table.items())
        for name, rows in optional.items():
            if rows is not None:
                write_table(out / name, rows)
        for p in list(out.iterdir()):  # remove files from an earlier write that no longer apply
            stale = p.name in ("segments", "text", "spk2gender") or _UTT2_RE.match(p.name)
            if stale and p.name != "utt2spk" and optional.get(p.name) is None and p.is_file():
                p.unlink()


def _table_path(path: str | Path) -> str | Path:
    """A text table's file; a ``str`` may be a Kaldi rspecifier (``ark:utt2spk``, ``ark,t:...``)."""
    return re.sub(r"^ark(,[a-z]+)*:", "", path) if isinstance(path, str) else path


def read_utt2spk(path: str | Path) -> dict[str, str]:
    """utt2spk as {utterance: speaker}, file order (no data-dir validation)."""
    return {u: f[0] for _, u, f in read_table(_table_path(path), 2, 2)}


def read_spk2utt(path: str | Path) -> dict[str, list[str]]:
    """spk2utt as {speaker: [utterance, ...]}, file order (no data-dir validation)."""
    return {s: us for _, s, us in read_table(_table_path(path), 2)}


def utt2spk_to_spk2utt(utt2spk: dict[str, str]) -> dict[str, list[str]]:
    """Like ``utils/utt2spk_to_spk2utt.pl``: speakers sorted, utterances in utt2spk order."""
    out: dict[str, list[str]] = {}
    for u, s in utt2spk.items():
        out.setdefault(s, []).append(u)
    return dict(sorted(out.items()))


def validate_data_dir(path: str | Path, check_audio: bool = True, root: str | Path | None = None) -> dict[str, Any]:
    """Validate a data dir and return a summary (counts, labels, sample rates, pipe count)."""
    return _load(Path(path), check_audio, root)[1]


# ---------------------------------------------------------------------------- internals


def _read(path: Path, min_fields: int, max_fields: int | None = None) -> list[Row]:
    """read_table plus Kaldi's file-level rules: non-empty, final newline, sorted unique keys."""
    rows = read_table(path, min_fields, max_fields)
    if not rows:
        raise BabelflowError(f"{path}: empty file")
    if not path.read_bytes().endswith(b"\n"):
        raise BabelflowError(f"{where(path, rows[-1][0], rows[-1][1])}: last line has no trailing newline")
    for (n0, k0, _), (n, k, _) in zip(rows, rows[1:]):
        if k == k0:
            raise BabelflowError(f"{where(path, n, k)}: duplicate key (also on line {n0})")
        if k < k0:
            raise BabelflowError(
                f"{where(path, n, k)}: keys not sorted (comes after '{k0}' on line {n0}); "
                "sort with LC_ALL=C sort")
    return rows


def _raw_values(path: Path, rows: list[Row]) -> dict[str, str]:
    """Values as written (internal spacing kept), for pipe commands and transcripts."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out = {}
    for n, key, _ in rows:
        parts = lines[n - 1].strip().split(None, 1)
        out[key] = parts[1].strip() if len(parts) > 1 else ""
    return out


def _same_keys(path: Path, rows: list[Row], expected: dict[str, int], ref: Path, what: str) -> None:
    """``rows`` must have exactly the keys of ``ref`` (given as key -> line in ``ref``)."""
    seen = set()
    for n, key, _ in rows:
        if key not in expected:
            raise BabelflowError(f"{where(path, n, key)}: {what} not present in {ref}")
        seen.add(key)
    for key, n in expected.items():
        if key not in seen:
            raise BabelflowError(f"{path}: missing {what} '{key}' (listed at {where(ref, n, key)})")


def _require(d: Path, name: str, hint: str = "") -> Path:
    p = d / name
    if not p.is_file():
        raise BabelflowError(f"{p}: required file missing{hint}")
    return p


def _load(d: Path, check_audio: bool, root: str | Path | None = None) -> tuple[DataDir, dict[str, Any]]:
    if not d.is_dir():
        raise BabelflowError(f"{d}: no such data directory")
    u2s_path = _require(d, "utt2spk")
    s2u_path = _require(d, "spk2utt", " (make it with: utils/utt2spk_to_spk2utt.pl "
                                      f"{u2s_path} > {d / 'spk2utt'})")
    wav_path = _require(d, "wav.scp")

    # utt2spk: two fields, sorted by utterance *and* by speaker (speaker ids as prefixes).
    u2s_rows = _read(u2s_path, 2, 2)
    for (n0, u0, (s0,)), (n, u, (s,)) in zip(u2s_rows, u2s_rows[1:]):
        if s < s0:
            raise BabelflowError(
                f"{where(u2s_path, n, u)}: utt2spk is not sorted by speaker: speaker '{s}' comes after "
                f"'{s0}' (line {n0}, utterance '{u0}'); make speaker ids prefixes of utterance ids")
    utt2spk = {u: f[0] for _, u, f in u2s_rows}
    utt_line = {u: n for n, u, _ in u2s_rows}

    # spk2utt must describe exactly the same mapping.
    s2u_rows = _read(s2u_path, 2)
    spk2utt: dict[str, list[str]] = {}
    listed: dict[str, int] = {}
    for n, spk, us in s2u_rows:
        for u in us:
            if u in listed:
                raise BabelflowError(f"{where(s2u_path, n, spk)}: utterance '{u}' listed twice "
                                     f"(also on line {listed[u]})")
            if utt2spk.get(u) != spk:
                owner = f"speaker '{utt2spk[u]}'" if u in utt2spk else "no speaker"
                raise BabelflowError(f"{where(s2u_path, n, spk)}: utterance '{u}' belongs to {owner} "
                                     f"in {u2s_path}; spk2utt and utt2spk do not match")
            listed[u] = n
        spk2utt[spk] = us
    for u, n in utt_line.items():
        if u not in listed:
            raise BabelflowError(f"{s2u_path}: missing utterance '{u}' (listed at {where(u2s_path, n, u)})")

    text = None
    if (d / "text").is_file():
        t_path = d / "text"
        t_rows = _read(t_path, 1)
        _same_keys(t_path, t_rows, utt_line, u2s_path, "utterance")
        for n, u, words in t_rows:
            bad = _ILLEGAL_TEXT.intersection(words)
            if bad:
                raise BabelflowError(f"{where(t_path, n, u)}: illegal symbol {sorted(bad)[0]} in transcript")
        text = _raw_values(t_path, t_rows)

    wav_rows = _read(wav_path, 2)
    wav = _raw_values(wav_path, wav_rows)
    wav_line = {r: n for n, r, _ in wav_rows}
    for r, v in wav.items():
        if v.startswith("~"):
            raise BabelflowError(f"{where(wav_path, wav_line[r], r)}: do not use '~' in wav.scp "
                                 "(no tilde expansion happens)")

    segments = None
    seg_path = d / "segments"
    if seg_path.is_file():
        seg_rows = _read(seg_path, 4, 4)
        _same_keys(seg_path, seg_rows, utt_line, u2s_path, "utterance")
        segments = {}
        used: set[str] = set()
        for n, u, (rec, b, e) in seg_rows:
            if rec not in wav:
                raise BabelflowError(f"{where(seg_path, n, u)}: recording '{rec}' not in {wav_path}")
            try:
                start, end = float(b), float(e)
            except ValueError:
                raise BabelflowError(f"{where(seg_path, n, u)}: start/end '{b} {e}' are not numbers") from None
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                raise BabelflowError(f"{where(seg_path, n, u)}: need 0 <= start < end, got start={b} end={e}")
            segments[u] = (rec, start, end)
            used.add(rec)
        for r in wav:
            if r not in used:
                raise BabelflowError(f"{where(wav_path, wav_line[r], r)}: recording is used by no "
                                     f"segment in {seg_path}")
    else:
        _same_keys(wav_path, wav_rows, utt_line, u2s_path, "utterance")

    spk2gender = None
    if (d / "spk2gender").is_file():
        g_path = d / "spk2gender"
        g_rows = _read(g_path, 2, 2)
        _same_keys(g_path, g_rows, {s: n for n, s, _ in s2u_rows}, s2u_path, "speaker")
        for n, s, (g,) in g_rows:
            if g not in ("m", "f"):
                raise BabelflowError(f"{where(g_path, n, s)}: gender must be 'm' or 'f', got '{g}'")
        spk2gender = {s: f[0] for _, s, f in g_rows}

    labels: dict[str, dict[str, str]] = {}
    extra: dict[str, dict[str, str]] = {}
    ignored = []
    for p in sorted(d.iterdir()):
        m = _UTT2_RE.match(p.name)
        if p.is_file() and m and p.name != "utt2spk":
            rows = _read(p, 2, 2)
            _same_keys(p, rows, utt_line, u2s_path, "utterance")
            _check_numeric(p, rows)
            table = {u: f[0] for _, u, f in rows}
            if p.name in _EXTRA:
                extra[p.name] = table
            else:
                labels[m.group(1)] = table
        elif p.is_file() and p.name not in _KNOWN:
            ignored.append(p.name)

    durations, rates, pipes = {}, set(), 0
    for r, v in wav.items():
        if v.endswith("|"):
            pipes += 1  # never run commands while validating
        elif check_audio:
            info = _audio_info(wav_path, wav_line[r], r, rooted_wav_value(v, root))
            durations[r] = info.frames / info.samplerate
            rates.add(info.samplerate)
    skipped: list[tuple[str, str]] = []  # as extract-segments skips them (a segment it would clip is kept)
    if segments is not None:
        for n, u, _ in seg_rows:
            rec, start, end = segments[u]
            if rec in durations and (end > durations[rec] + MAX_OVERSHOOT or start >= durations[rec]):
                skipped.append((u, f"{seg_path}:{n}: segment {start:g}-{end:g} s, recording '{rec}' ends at "
                                   f"{durations[rec]:.3f} s (extract-segments --max-overshoot {MAX_OVERSHOOT:g})"))

    data = DataDir(path=d, wav=wav, utt2spk=utt2spk, spk2utt=spk2utt, segments=segments,
                   text=text, labels=labels, spk2gender=spk2gender, extra=extra)
    summary = {
        "num_utts": len(utt2spk),
        "num_spks": len(spk2utt),
        "num_recordings": len(wav),
        "has_segments": segments is not None,
        "labels": sorted(labels),
        "sample_rates": sorted(rates),
        "pipes": pipes,
        "ignored_files": ignored,
        "skipped": skipped,
    }
    return data, summary


def _check_numeric(path: Path, rows: list[Row]) -> None:
    """utt2dur must hold positive seconds, utt2num_frames positive integers (as in Kaldi)."""
    if path.name not in ("utt2dur", "utt2num_frames"):
        return
    for n, u, (v,) in rows:
        try:
            x = float(v) if path.name == "utt2dur" else int(v)
        except ValueError:
            x = 0
        if not (x > 0 and math.isfinite(x)):
            kind = "a positive number" if path.name == "utt2dur" else "a positive integer"
            raise BabelflowError(f"{where(path, n, u)}: value '{v}' is not {kind}")


def _audio_info(wav_path: Path, n: int, rec: str, value: str) -> Any:
    import soundfile as sf  # only when audio is checked: readers of utt2spk need no libsndfile
    p = Path(value)
    if not p.is_file():
        raise BabelflowError(f"{where(wav_path, n, rec)}: audio file not found: {value}"
                             + ("" if p.is_absolute() else f" (relative to the working directory {Path.cwd()}; "
                                "set data.root to the folder it is relative to)"))
    try:
        return sf.info(str(p))
    except Exception as e:  # libsndfile raises several types for unreadable files
        raise BabelflowError(f"{where(wav_path, n, rec)}: cannot read audio file {value} "
                             f"(corrupt or not a format libsndfile knows): {e}") from None
