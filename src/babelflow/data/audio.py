"""Audio of a Kaldi data dir: ``wav.scp`` (paths, ``path:offset`` arks, ``cmd ... |`` pipes) and ``segments``,
read as Kaldi's ``extract-segments`` / ``wav-copy`` read them, with errors a user can act on.

Pipes are shell commands run with the user's rights from the current directory (Kaldi runs them
from the experiment folder): a data dir received from elsewhere is code. A failing pipe or an
undecodable file ends the job with one line naming ``wav.scp:LINE``, the key, the command or
file and the tool's own last stderr line. Segments ending past their recording by more than
``max_overshoot`` (0.5 s, as ``extract-segments``) are skipped, each named in the log.
"""

from __future__ import annotations

import io
import logging
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import BabelflowError

log = logging.getLogger("babelflow")
MAX_OVERSHOOT = 0.5  # seconds, extract-segments --max-overshoot


def read_wav_scp(path: str | Path) -> list[tuple[str, str, int]]:
    """(key, value, line number) of each entry."""
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for n, line in enumerate(f, 1):
            parts = line.strip().split(None, 1)
            if not parts:
                continue
            if len(parts) != 2:
                raise BabelflowError(f"{path}:{n}: expected '<recording-id> <path or command |>', got '{line.strip()}'")
            out.append((parts[0], parts[1].strip(), n))
    return out


def pipe_words(value: str) -> list[str]:
    """The words of a ``wav.scp`` pipe entry's command (``cmd ... |``); [] for a path."""
    if not value.endswith("|"):
        return []
    try:
        return shlex.split(value[:-1])
    except ValueError:
        return value[:-1].split()


def pipe_programs(path: str | Path) -> list[str]:
    """The distinct programs ``wav.scp``'s pipes run (what ``check-config`` lists before running any)."""
    progs = (pipe_words(value)[:1] for _, value, _ in read_wav_scp(path))
    return list(dict.fromkeys(w for words in progs for w in words))


def rooted_wav_value(value: str, root: str | Path | None) -> str:
    """A ``wav.scp`` value made independent of the working directory: a relative path (or ``ark:offset``)
    joined to ``root``, a pipe run from ``root`` (``cd ROOT && cmd |``), as Kaldi runs them from the
    experiment folder. Absolute paths and ``root=None`` leave it as it is."""
    if not root or value == "-":
        return value
    if value.endswith("|"):
        return f"cd {shlex.quote(str(root))} && {value}"
    return value if Path(value).is_absolute() else str(Path(root) / value)  # a path, or an ark's path:offset


def load_recording(wav_scp: str | Path, key: str, value: str, line: int) -> tuple[int, np.ndarray]:
    """(rate, int16-scale samples) of one ``wav.scp`` entry; errors name the entry."""
    here = f"{wav_scp}:{line} (key {key})"
    if value.endswith("|"):
        cmd = value[:-1].strip()
        try:
            proc = subprocess.run(cmd, shell=True, capture_output=True)
        except OSError as e:
            raise BabelflowError(f"{here}: cannot run `{cmd}`: {e}") from None
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0 or not proc.stdout:
            why = f"exit status {proc.returncode}" if proc.returncode else "no output"
            raise BabelflowError(f"{here}: `{cmd}` failed ({why}): {err[-1] if err else 'no message'}")
        return _decode(proc.stdout, f"{here}: the output of `{cmd}`")
    if value == "-" or value.startswith("|"):
        raise BabelflowError(f"{here}: reading audio from stdin is not supported")
    if not Path(value).is_file() and ":" in value:  # an ark with an offset, as wav-copy writes them
        import kaldiio

        try:
            rate, samples = kaldiio.load_mat(value)
        except Exception as e:  # noqa: BLE001 - kaldiio raises many types for damaged arks
            raise BabelflowError(f"{here}: cannot read audio '{value}' ({type(e).__name__}: {e})") from None
        return int(rate), samples
    try:
        data = Path(value).read_bytes()
    except OSError as e:
        raise BabelflowError(f"{here}: cannot read audio file '{value}': {e.strerror}") from None
    return _decode(data, f"{here}: audio file '{value}'")


def _decode(data: bytes, what: str) -> tuple[int, np.ndarray]:
    """WAV through kaldiio (Kaldi's reader, tolerant of a streamed header's bogus sizes), anything
    libsndfile reads (FLAC, SPHERE ...) as int16, as Kaldi's samples are."""
    try:
        if data[:4] == b"RIFF":
            from kaldiio.matio import read_wav

            rate, samples = read_wav(io.BytesIO(data))
        else:
            import soundfile as sf

            samples, rate = sf.read(io.BytesIO(data), dtype="int16")
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        raise BabelflowError(f"{what}: cannot decode ({type(e).__name__}: {e})") from None
    if samples.size == 0:
        raise BabelflowError(f"{what}: no samples")
    return int(rate), samples


def iter_data_audio(wav_scp: str | Path, segments: str | Path | None = None,
                    max_overshoot: float = MAX_OVERSHOOT,
                    skipped: list[tuple[str, str]] | None = None) -> Iterator[tuple[str, int, np.ndarray]]:
    """(utterance, rate, samples) in ``segments`` order (or ``wav.scp``'s without one); a recording is
    read once for all its segments when they are consecutive, as Kaldi's sorted files have them. Segments
    Kaldi's ``extract-segments`` would skip are logged and appended to ``skipped`` as (utterance, reason)."""
    entries = {k: (v, n) for k, v, n in read_wav_scp(wav_scp)}
    if segments is None:
        for key, (value, n) in entries.items():
            yield key, *load_recording(wav_scp, key, value, n)
        return
    cached: tuple[str, int, np.ndarray] | None = None
    with open(segments, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                utt, rec, start, end = parts[0], parts[1], float(parts[2]), float(parts[3])
            except (IndexError, ValueError):
                raise BabelflowError(f"{segments}:{n}: expected '<utt> <recording> <start> <end>'") from None
            if rec not in entries:
                raise BabelflowError(f"{segments}:{n} (key {utt}): recording '{rec}' is not in {wav_scp}")
            if cached is None or cached[0] != rec:
                cached = (rec, *load_recording(wav_scp, rec, *entries[rec]))
            _, rate, samples = cached
            first = int(start * rate)
            last = len(samples) if end == -1 else int(end * rate)
            if last > len(samples):
                over = end - len(samples) / rate
                if over > max_overshoot:
                    reason = (f"{segments}:{n}: ends {over:.3f} s after its recording {rec} "
                              f"(max-overshoot {max_overshoot:.1f})")
                    log.warning("skipped segment %s: %s", utt, reason)
                    if skipped is not None:
                        skipped.append((utt, reason))
                    continue
                last = len(samples)
            if first >= last:
                reason = f"{segments}:{n}: empty ({parts[2]} to {parts[3]} s)"
                log.warning("skipped segment %s: %s", utt, reason)
                if skipped is not None:
                    skipped.append((utt, reason))
                continue
            yield utt, rate, samples[first:last]
