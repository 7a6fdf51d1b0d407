"""What a user's Kaldi data dir's results depend on, for Snakemake and DVC to track.

A data dir is its files *and* the audio its ``wav.scp`` names. Snakemake compares input
mtimes, and a directory's mtime changes only when entries come or go, not when ``text`` is
edited in place: so every file of the dir is an input, and every audio file ``wav.scp``
names (a plain path, or an argument of a ``cmd ... |`` pipe that is an existing file). DVC
hashes contents; it gets the data dir and the directories holding the audio (``audio_roots``)
rather than one dependency per recording. Not tracked: the programs a pipe runs (``sox``,
``flac``: their versions) and files a pipe reads that its command line does not name.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path


@cache
def data_dir_files(path: str) -> tuple[str, ...]:
    """The regular files directly in a data dir (Kaldi data dirs are flat; ``split*/`` and ``.backup/``
    are derived), sorted; nothing when it does not exist yet (the config check reports that)."""
    d = Path(path)
    if not d.is_dir():
        return ()
    return tuple(sorted(str(d / e.name) for e in os.scandir(d) if e.is_file() and not e.name.startswith(".")))


@cache
def audio_files(path: str, root: str | None = None) -> tuple[str, ...]:
    """The audio files ``path/wav.scp`` names, relative to ``root`` (``data.root``; default the working
    directory) as Kaldi resolves them, sorted and unique; unparseable lines are skipped here (the data
    step reports them with their line)."""
    from ..errors import BabelflowError
    from .audio import pipe_words, read_wav_scp

    wav = Path(path) / "wav.scp"
    try:
        entries = read_wav_scp(wav) if wav.is_file() else []
    except (BabelflowError, OSError):
        return ()
    found: set[str] = set()
    at = (lambda w: w if not root or os.path.isabs(w) else os.path.join(root, w))
    for _, value, _ in entries:
        if value.endswith("|"):
            found.update(at(w) for w in pipe_words(value) if "/" in w and os.path.isfile(at(w)))
        elif value != "-":
            found.add(at(value.split(":", 1)[0] if not os.path.isfile(at(value)) and ":" in value else value))
    return tuple(sorted(found))


def audio_roots(files: list[str] | tuple[str, ...]) -> list[str]:
    """The directories that hold ``files``: their deepest common directory when that is not a file
    system root, else each file's own directory (deduplicated)."""
    parents = sorted({os.path.dirname(f) or "." for f in files})
    if len(parents) <= 1:
        return parents
    common = os.path.commonpath(parents)
    if common in ("", os.sep, "."):
        return parents
    return [common]


@cache
def feats_files(path: str) -> tuple[str, ...]:
    """A Kaldi dir's ``feats.scp``, ``cmvn.scp`` (and ``utt2num_frames``) and the archives they point into."""
    d = Path(path)
    out = {str(d / f) for f in ("feats.scp", "cmvn.scp", "utt2num_frames") if (d / f).is_file()}
    for scp in ("feats.scp", "cmvn.scp"):
        if (d / scp).is_file():
            out.update(_scp_archives(d / scp))
    return tuple(sorted(out))


def _scp_archives(scp: Path) -> set[str]:
    """The archives an scp file's ``key ark:offset`` lines point into (pipes left out)."""
    out = set()
    with open(scp, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(None, 1)
            if len(parts) == 2 and not parts[1].rstrip().endswith("|"):
                out.add(parts[1].strip().rsplit(":", 1)[0])
    return out


@cache
def kaldi_egs_files(path: str) -> tuple[str, ...]:
    """A Kaldi egs dir's files (archives, ``*.scp``, ``*.egs``, ``cmvn_opts``, ``info/*``) and any archive its
    scp files point to elsewhere."""
    d = Path(path)
    if not d.is_dir():
        return ()
    out = {str(p) for p in d.iterdir() if p.is_file() and not p.name.startswith(".")}
    out |= {str(p) for p in (d / "info").glob("*") if p.is_file()}
    arks = {a for scp in d.glob("*.scp") for a in _scp_archives(scp) if os.path.isfile(a)}
    known = {os.path.abspath(p) for p in out}
    return tuple(sorted(out | {a for a in arks if os.path.abspath(a) not in known}))
