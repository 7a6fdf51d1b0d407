"""Kaldi nnet3 egs <-> babelflow egs: ``egs show``, ``egs export-kaldi``, ``egs import-kaldi``.

An example of ours becomes the NnetExample that ``nnet3-get-egs`` would have written
(:mod:`babelflow.egs.examples`). Importing goes the other way; each Kaldi eg becomes one
segment holding its input rows, so nothing is lost.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import numpy as np

from ..errors import BabelflowError
from ..io import atomic_dir, read_lines, write_info, write_text
from ..kaldi.general_matrix import SparseMatrix
from ..kaldi.nnet_example import NnetExample, egs_to_text, read_egs, write_egs
from ..kaldi.table import looks_like_rspecifier
from .examples import merged_nnet_examples, nnet_examples
from .format import FORMAT_VERSION, LABEL_DTYPE, ArchiveWriter
from .merged import MergedDir, is_merged_dir
from .reader import PARTS, EgsDir


def _is_kaldi_source(source: str) -> bool:
    return looks_like_rspecifier(source) and not Path(source).is_dir()


def show(source: str, out: TextIO = sys.stdout, limit: int | None = None, key: str | None = None) -> int:
    """Print egs as ``nnet3-copy-egs <in> ark,t:-`` does (a merged dir: as with its
    ``--outputs --weights``, in schedule order). Returns the number printed."""
    items: Iterable[tuple[str, NnetExample]]
    if _is_kaldi_source(source):
        items = read_egs(source)
    elif is_merged_dir(source):
        items = merged_nnet_examples(MergedDir(source))
    else:
        items = nnet_examples(EgsDir(source))
    shown = 0
    for k, eg in items:
        if key is not None and k != key:
            continue
        out.write(egs_to_text(k, eg))
        shown += 1
        if limit is not None and shown >= limit:
            break
    if key is not None and shown == 0:
        raise BabelflowError(f"{source}: no example with key '{key}'")
    return shown


def export_kaldi(egs_dir: str | os.PathLike, wspecifier: str, compress: str | None = None) -> int:
    """Write the training examples as Kaldi binary egs (``ark,scp:egs.1.ark,egs.scp`` ...)."""
    return write_egs(wspecifier, nnet_examples(EgsDir(egs_dir)), compress=compress)


class _Importer:
    """Collects the shape of imported egs and checks every eg agrees with the first."""

    def __init__(self, source: str):
        self.source = source
        self.lc = self.rc = self.n = self.dim = self.num_pdfs = self.ivector_dim = None

    def split(self, key: str, eg: NnetExample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        ios = {io.name: io for io in eg.io}
        unknown = set(ios) - {"input", "output", "ivector"}
        if "input" not in ios or "output" not in ios or unknown:
            raise BabelflowError(f"{self.source}: eg '{key}': expected NnetIos input, output[, ivector], "
                                 f"got {', '.join(ios)}")
        inp, outp = ios["input"], ios["output"]
        t_in, t_out = inp.indexes[:, 1], outp.indexes[:, 1]
        n = len(t_out)
        if (inp.indexes[:, [0, 2]] != 0).any() or (outp.indexes[:, [0, 2]] != 0).any() \
                or not np.array_equal(t_in, np.arange(t_in[0], t_in[0] + len(t_in))) \
                or not np.array_equal(t_out, np.arange(n)):
            raise BabelflowError(f"{self.source}: eg '{key}': not a single-utterance eg with consecutive frames "
                                 "(merged or frame-subsampled egs cannot be imported)")
        shape = (-int(t_in[0]), int(t_in[-1]) - (n - 1), n, inp.features.shape[1], outp.features.shape[1],
                 ios["ivector"].features.shape[1] if "ivector" in ios else 0)
        if self.lc is None:
            self.lc, self.rc, self.n, self.dim, self.num_pdfs, self.ivector_dim = shape
        elif shape != (self.lc, self.rc, self.n, self.dim, self.num_pdfs, self.ivector_dim):
            raise BabelflowError(f"{self.source}: eg '{key}' has (left_context, right_context, frames, feat_dim, "
                                 f"num_pdfs, ivector_dim) = {shape}, the first eg had "
                                 f"{(self.lc, self.rc, self.n, self.dim, self.num_pdfs, self.ivector_dim)}")
        targets = outp.features if isinstance(outp.features, SparseMatrix) else SparseMatrix.from_dense(outp.features)
        labels = np.zeros(n, LABEL_DTYPE)
        labels["pdf"] = -1
        for r, (_, pairs) in enumerate(targets.rows):
            if len(pairs) > 1:
                raise BabelflowError(f"{self.source}: eg '{key}': frame {r} has {len(pairs)} target pdfs "
                                     "(soft targets are not supported)")
            if pairs:
                labels[r] = pairs[0]
        ivec = ios["ivector"].features[0] if "ivector" in ios else None
        return np.asarray(inp.features, np.float32), labels, ivec


_DIAGNOSTIC = (("valid", ("valid_diagnostic.scp", "valid_diagnostic.egs")),
               ("train_diagnostic", ("train_diagnostic.scp", "train_diagnostic.egs")))
_NOT_TRAINING = ("valid_diagnostic", "train_diagnostic", "combine")


def _natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _info_int(src_dir: Path, name: str) -> int | None:
    f = src_dir / "info" / name
    if not f.is_file():
        return None
    text = f.read_text().strip()
    try:
        return int(text)
    except ValueError:
        raise BabelflowError(f"{f}: expected an integer, got '{text[:40]}'") from None


def _scp_arks(scp: Path) -> None:
    """Every archive an egs scp points into must exist (named with the scp line), before reading any."""
    seen: set[str] = set()
    for n, line in enumerate(read_lines(scp), 1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise BabelflowError(f"{scp}:{n}: expected '<key> <ark>:<offset>', got '{line[:80]}'")
        ark = re.sub(r":\d+$", "", parts[1])
        if ark not in seen and not Path(ark).is_file():
            raise BabelflowError(f"{scp}:{n}: key '{parts[0]}': archive '{ark}' not found")
        seen.add(ark)


def kaldi_egs_parts(src_dir: Path) -> dict[str, str]:
    """The rspecifiers of a Kaldi egs dir (``get_egs.sh``'s layout): training egs from ``egs.scp``, else
    ``egs.1..N.ark`` for ``info/num_archives`` = N, else every other ``*.ark`` (archives named otherwise);
    the diagnostic sets when present. A missing archive is named before anything is read."""
    parts: dict[str, str] = {}
    for part, names in (("train", ("egs.scp",)), *_DIAGNOSTIC):
        found = [src_dir / n for n in names if (src_dir / n).exists()]
        if found:
            if found[0].suffix == ".scp":
                _scp_arks(found[0])
            parts[part] = f"{'scp' if found[0].suffix == '.scp' else 'ark'}:{found[0]}"
    if "train" in parts:
        return parts
    num = _info_int(src_dir, "num_archives")
    if num is not None:
        arks = [src_dir / f"egs.{j}.ark" for j in range(1, num + 1)]
        missing = [a for a in arks if not a.is_file()]
        if missing and any(a.is_file() for a in arks):
            raise BabelflowError(f"{missing[0]}: missing ({src_dir / 'info' / 'num_archives'} says {num} archives)")
        if missing:
            arks = []
    else:
        arks = []
    if not arks:
        arks = sorted((a for a in src_dir.glob("*.ark") if not a.name.startswith(_NOT_TRAINING)), key=_natural)
        if num is not None and arks and len(arks) != num:
            raise BabelflowError(f"{src_dir}: {len(arks)} archives ({arks[0].name} ...), but "
                                 f"{src_dir / 'info' / 'num_archives'} says {num}")
    if not arks:
        raise BabelflowError(f"{src_dir}: no egs.scp, egs.N.ark or other *.ark archives")
    parts["train"] = "ark:cat " + " ".join(shlex.quote(str(a)) for a in arks) + " |"
    return parts


def _check_against_info(src_dir: Path, imp: _Importer) -> None:
    """What the egs hold must agree with what ``info/`` says (a stale info/ means a mixed-up dir)."""
    for name, got in (("feat_dim", imp.dim), ("ivector_dim", imp.ivector_dim), ("frames_per_eg", imp.n)):
        want = _info_int(src_dir, name)
        if want is not None and got is not None and want != got:
            raise BabelflowError(f"{src_dir / 'info' / name}: says {want}, but the egs have {name} {got}")


def import_kaldi(source: str, out_dir: str | os.PathLike, dtype: str = "float32", task: str = "kaldi",
                 num_pdfs: int | None = None) -> dict:
    """Import Kaldi egs (an rspecifier, or a Kaldi egs dir) as a babelflow egs dir. With ``num_pdfs`` (the
    alignment dir's model), the egs' output dimension must equal it."""
    src_dir = Path(source) if Path(source).is_dir() else None
    parts = kaldi_egs_parts(src_dir) if src_dir is not None else {"train": source}
    imp = _Importer(source)
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for part, rspec in parts.items():
            writer = None
            try:
                for key, eg in read_egs(rspec):
                    feats, labels, ivec = imp.split(key, eg)
                    if writer is None:
                        writer = ArchiveWriter(tmp / f"{PARTS[part]}.1", imp.dim, dtype, True, imp.ivector_dim)
                    seg = writer.add_segment(key, feats)
                    writer.add_examples(seg, [imp.lc], [imp.n], labels=labels,
                                        ivectors=None if ivec is None else ivec[None, :])
                counts[part] = writer.num_examples if writer else 0
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            if writer is not None:
                writer.close()
        if not counts.get("train"):
            raise BabelflowError(f"{source}: no egs")
        if src_dir is not None:
            _check_against_info(src_dir, imp)
        if num_pdfs is not None and imp.num_pdfs != num_pdfs:
            raise BabelflowError(f"{source}: the egs have {imp.num_pdfs} output pdfs, the alignment dir's model "
                                 f"{num_pdfs}: they come from different trees")
        info = {"format_version": FORMAT_VERSION, "task": task, "kind": "frame", "feat_dim": imp.dim,
                "feats_dtype": dtype, "left_context": imp.lc, "right_context": imp.rc,
                "left_context_initial": -1, "right_context_final": -1, "frames_per_eg": imp.n,
                "num_archives": 1, "num_egs": counts["train"], "num_frames": counts["train"] * imp.n,
                "num_pdfs": imp.num_pdfs, "ivector_dim": imp.ivector_dim, "key_format": "segment",
                "source": source}
        cmvn = src_dir / "cmvn_opts" if src_dir else None
        if cmvn is not None and cmvn.exists():
            info["cmvn_opts"] = cmvn.read_text().strip()
            write_text(tmp / "cmvn_opts", cmvn.read_text())
        write_info(tmp, info)
        write_text(tmp / "report.tsv", "part\tegs\tframes\tsource\n" + "".join(
            f"{part}\t{n}\t{n * imp.n}\t{parts[part]}\n" for part, n in counts.items()))
        EgsDir(tmp).check()
    return info
