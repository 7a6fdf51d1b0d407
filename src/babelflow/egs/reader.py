"""Reading an egs dir: ``info/`` plus its archives, checked against each other."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from ..errors import BabelflowError
from ..io import read_info
from .format import Archive

PARTS = {"train": "egs", "valid": "valid", "train_diagnostic": "train_diagnostic"}


class InfoDir:
    """An artifact dir with an ``info/`` dir of one-value files (read once): what egs and merged dirs share."""

    path: Path

    @cached_property
    def info(self) -> dict[str, str]:
        return read_info(self.path)

    def _int(self, name: str, default: int | None = None) -> int:
        if default is not None and name not in self.info:
            return default
        try:
            return int(self.info[name])
        except (KeyError, ValueError):
            raise BabelflowError(f"{self.path}/info/{name}: missing or not an integer") from None

    @property
    def feat_dim(self) -> int:
        return self._int("feat_dim")

    @property
    def left_context(self) -> int:
        return self._int("left_context")

    @property
    def right_context(self) -> int:
        return self._int("right_context")

    @property
    def num_archives(self) -> int:
        return self._int("num_archives")

    @property
    def ivector_dim(self) -> int:
        return self._int("ivector_dim", 0)


class EgsDir(InfoDir):
    """An egs dir written by ``babelflow egs`` (or imported from Kaldi egs)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not (self.path / "info").is_dir():
            raise BabelflowError(f"{self.path}: not an egs dir (no info/)")

    @property
    def kind(self) -> str:
        return self.info.get("kind", "frame")

    @property
    def num_outputs(self) -> int:
        return self._int("num_pdfs") if self.kind == "frame" else self._int("num_classes")

    @property
    def key_format(self) -> str:
        return self.info.get("key_format", "segment-frame")

    def classes(self) -> list[str]:
        path = self.path / "info" / "classes.txt"
        return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []

    @property
    def feats_store(self) -> Path | None:
        """The feature store whose rows the archives' segments name (relative to this dir), if any."""
        rel = self.info.get("feats_store")
        return None if rel is None else self.path / rel

    def archive(self, part: str, number: int) -> Archive:
        prefix = self.path / f"{PARTS[part]}.{number}"
        store = self.feats_store
        return Archive.open(prefix, self.feat_dim, self.info.get("feats_dtype", "float32"),
                            self.kind == "frame", self.ivector_dim, None if store is None else store / "store.feats")

    def archives(self, part: str = "train") -> Iterator[Archive]:
        for j in range(1, self.num_archives + 1):
            if part == "train" or Path(f"{self.path / PARTS[part]}.{j}.index").exists():
                yield self.archive(part, j)

    def check(self) -> None:
        """Open every archive (which checks sizes) and compare totals with info/."""
        n = sum(len(a) for a in self.archives("train"))
        if "num_egs" in self.info and n != self._int("num_egs"):
            raise BabelflowError(f"{self.path}: info/num_egs says {self.info['num_egs']}, archives hold {n}")
        for part in ("valid", "train_diagnostic"):
            list(self.archives(part))  # opening an archive checks its sizes against info/
        if self.kind == "frame":
            for a in self.archives("train"):
                if a.labels is not None and len(a.labels) and a.labels["pdf"].max() >= self.num_outputs:
                    raise BabelflowError(f"{a.prefix}.labels: pdf {a.labels['pdf'].max()} >= info/num_pdfs "
                                         f"{self.num_outputs}")
