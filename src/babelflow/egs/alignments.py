"""Frame targets for the egs step: any alignment source -> ``ali_pdf.{ark,scp}`` + ``num_pdfs``.

Like ``get_egs.sh`` copying ``ali.*.gz`` into ``ali.{ark,scp}`` once, so that every egs
job can look its utterances up by key instead of decompressing every archive.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import BabelflowError
from ..io import write_text
from ..kaldi.alignments import AlignmentDir, read_pdf_alignments, write_int_vectors
from ..kaldi.table import looks_like_rspecifier


def prepare_pdf_alignments(source: str, out_dir: str | os.PathLike, num_pdfs: int | None = None) -> int:
    """Write ``out_dir/ali_pdf.{ark,scp}`` and ``out_dir/num_pdfs``; returns num_pdfs."""
    out_dir = Path(out_dir)
    is_dir = not looks_like_rspecifier(source)
    if is_dir:
        num_pdfs = AlignmentDir(source).num_pdfs
    max_pdf = -1

    def pdfs():
        nonlocal max_pdf
        for key, ali in read_pdf_alignments(source):
            if len(ali):
                max_pdf = max(max_pdf, int(ali.max()))
            yield key, ali

    created = not out_dir.exists()
    try:
        write_int_vectors(f"ark,scp:{out_dir / 'ali_pdf.ark'},{out_dir / 'ali_pdf.scp'}", pdfs())
    except BaseException:
        if created:  # nothing of a failed run stays behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    if num_pdfs is None:
        num_pdfs = max_pdf + 1
    elif max_pdf >= num_pdfs:
        raise BabelflowError(f"{source}: pdf id {max_pdf} >= num_pdfs {num_pdfs}")
    write_text(out_dir / "num_pdfs", f"{num_pdfs}\n")
    return num_pdfs
