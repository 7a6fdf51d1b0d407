"""Kaldi rspecifiers / wspecifiers on top of kaldiio, plus an atomic ``ark,scp:`` writer.

kaldiio already reads and writes Kaldi tables (pipes, ``ark,t:``, ``scp:``, stdout);
the one thing added here is atomicity for file outputs: the archive is written under a
temporary name while the scp already carries the final name, and both are renamed
only when every entry is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import kaldiio
import numpy as np

from .errors import BabelflowError
from .io import clear_stale_temps, is_special_file
from .kaldi.table import parse_wspecifier as parse_kaldi_wspecifier


class AtomicArkScpWriter:
    """Write a binary ark (+ optional scp) whose files appear only when complete."""

    def __init__(self, ark: str | os.PathLike, scp: str | os.PathLike | None = None,
                 compression_method: int | None = None):
        self.ark, self.scp = Path(ark), Path(scp) if scp else None
        self._in_place = {f for f in (self.ark, self.scp) if f is not None and is_special_file(f)}  # ark:/dev/null
        self.ark.parent.mkdir(parents=True, exist_ok=True)
        for f in (self.ark, self.scp):
            if f is not None and f not in self._in_place:
                clear_stale_temps(f)
        self._tmp_ark = self._temp(self.ark)
        self._f = open(self._tmp_ark, "wb")
        self._scp_lines: list[str] = []
        self._compression = compression_method
        self._seekable = self._f.seekable()  # a FIFO is not: its scp offsets (into nothing kept) stay 0

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        if not key or any(c.isspace() for c in key):
            raise BabelflowError(f"{self.ark}: invalid key {key!r} (Kaldi keys are non-empty, without spaces)")
        # scp points at the "\0B" after "key "
        offset = (self._f.tell() if self._seekable else 0) + len(key.encode()) + 1
        kaldiio.save_ark(self._f, {key: value}, compression_method=self._compression)
        self._scp_lines.append(f"{key} {self.ark}:{offset}\n")

    def _temp(self, path: Path) -> Path:
        return path if path in self._in_place else path.with_name(f".{path.name}.{os.getpid()}.tmp")

    def close(self) -> None:
        self._f.close()
        done = [(self._tmp_ark, self.ark)]
        if self.scp is not None:
            tmp_scp = self._temp(self.scp)
            tmp_scp.write_text("".join(self._scp_lines))
            done.append((tmp_scp, self.scp))
        for tmp, path in done:
            if tmp != path:
                os.replace(tmp, path)

    def abort(self) -> None:
        self._f.close()
        if self._tmp_ark != self.ark:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp_ark)

    def __enter__(self) -> AtomicArkScpWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def parse_wspecifier(wspecifier: str) -> tuple[set[str], list[str]]:
    """Split ``ark,scp,t:a.ark,a.scp`` into ({'ark','scp','t'}, ['a.ark', 'a.scp']), validated as
    :func:`babelflow.kaldi.table.parse_wspecifier` does; ``t`` is in the flags iff the output is
    text (the last of ``b``/``t`` wins, as in Kaldi)."""
    ark, scp, binary = parse_kaldi_wspecifier(wspecifier)
    flags = set(wspecifier.partition(":")[0].split(",")) - {"b", "t"} | (set() if binary else {"t"})
    return flags, [ark] if scp is None else [ark, scp]


@contextlib.contextmanager
def open_matrix_writer(wspecifier: str, compression_method: int | None = None) -> Iterator:
    """A ``writer[key] = matrix`` object for a wspecifier; file outputs are atomic."""
    flags, paths = parse_wspecifier(wspecifier)
    is_file = not (paths[0] == "-" or paths[0].lstrip().startswith("|"))
    if "t" not in flags and is_file and "f" not in flags:
        with AtomicArkScpWriter(paths[0], paths[1] if "scp" in flags else None, compression_method) as w:
            yield w
        return
    with kaldiio.WriteHelper(wspecifier, compression_method=compression_method) as w:
        yield w


def read_matrices(rspecifier: str, segments: str | None = None) -> Iterator[tuple[str, np.ndarray]]:
    """Iterate a Kaldi table; errors name the rspecifier."""
    try:
        with kaldiio.ReadHelper(rspecifier, segments=segments) as reader:
            yield from reader
    except BabelflowError:
        raise
    except (OSError, ValueError, EOFError, RuntimeError, KeyError) as e:
        raise BabelflowError(f"cannot read '{rspecifier}': {e}") from None
