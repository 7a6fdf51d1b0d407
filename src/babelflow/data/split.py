"""Per-speaker splitting, matching Kaldi's ``utils/split_data.sh`` (``split_scp.pl --utt2spk``).

Jobs must never share a speaker, because per-speaker statistics (CMVN, i-vectors,
adaptation) are accumulated inside one job.  Reproducing Kaldi's assignment exactly keeps
job contents identical to a Kaldi recipe run on the same data dir.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import BabelflowError
from ..io import atomic_dir, write_info, write_skipped
from .datadir import DataDir, _load

log = logging.getLogger("babelflow")


def split_keys_by_speaker(utt2spk: Mapping[str, str], nj: int) -> list[list[str]]:
    """Utterance lists for ``nj`` jobs, speakers kept whole and contiguous.

    Speakers are taken in order of first appearance; speaker ``i`` of ``S`` starts in job
    ``i*nj//S``; then boundary speakers move to a neighbouring job whenever that shrinks
    the utterance-count difference between the two, until nothing changes.
    """
    if nj < 1:
        raise BabelflowError(f"number of jobs must be >= 1, got {nj}")
    spk_utts: dict[str, list[str]] = {}
    for u, s in utt2spk.items():
        spk_utts.setdefault(s, []).append(u)
    spks = list(spk_utts)
    if len(spks) < nj:
        raise BabelflowError(f"refusing to split data because the number of speakers {len(spks)} "
                             f"is less than the number of jobs {nj}")
    jobs: list[list[str]] = [[] for _ in range(nj)]
    counts = [0] * nj
    for i, s in enumerate(spks):
        j = i * nj // len(spks)
        jobs[j].append(s)
        counts[j] += len(spk_utts[s])

    # Each move strictly reduces sum_j (count_j - mean)^2, so the loop terminates.
    changed = True
    while changed:
        changed = False
        for j in range(nj):
            if j < nj - 1 and jobs[j]:  # last speaker of job j -> front of job j+1
                c = len(spk_utts[jobs[j][-1]])
                if abs((counts[j + 1] + c) - (counts[j] - c)) < abs(counts[j + 1] - counts[j]):
                    jobs[j + 1].insert(0, jobs[j].pop())
                    counts[j] -= c
                    counts[j + 1] += c
                    changed = True
            if j > 0 and jobs[j]:  # first speaker of job j -> end of job j-1
                c = len(spk_utts[jobs[j][0]])
                if abs((counts[j] - c) - (counts[j - 1] + c)) < abs(counts[j] - counts[j - 1]):
                    jobs[j - 1].append(jobs[j].pop(0))
                    counts[j] -= c
                    counts[j - 1] += c
                    changed = True
    for j, js in enumerate(jobs, 1):
        if not js:
            raise BabelflowError(f"split into {nj} jobs leaves job {j} empty "
                                 "(too many jobs for too few speakers?)")
    return [[u for s in js for u in spk_utts[s]] for js in jobs]


def split_data(data: DataDir, nj: int, out_dir: str | Path) -> list[Path]:
    """Write ``out_dir/split<nj>/<1..nj>/``, each a complete data dir; all or nothing."""
    try:
        groups = split_keys_by_speaker(data.utt2spk, nj)
    except BabelflowError as e:
        raise BabelflowError(f"{data.path / 'utt2spk'}: {e}") from None
    target = Path(out_dir) / f"split{nj}"
    with atomic_dir(target) as tmp:
        for j, utts in enumerate(groups, 1):
            data.subset(utts).write(tmp / str(j))
    return [target / str(j) for j in range(1, nj + 1)]


def prepare_data_dir(src: str | Path, out_dir: str | Path, nj: int, root: str | Path | None = None) -> dict[str, Any]:
    """Validate ``src`` and publish a clean copy with its split and ``info/`` as one directory.

    Builds everything under a temporary name so a failed validation or split leaves any
    previous ``out_dir`` untouched. With ``root`` (``data.root``), ``wav.scp``'s relative paths and
    pipes are relative to it, and the copy's ``wav.scp`` says so (absolute paths, ``cd ROOT && cmd |``):
    every later step reads the audio the same way, from any directory, on any executor.
    """
    data, summary = _load(Path(src), check_audio=True, root=root)
    data = data.with_audio_root(root)
    skipped = dict(summary["skipped"])
    if skipped:  # what extract-segments would skip is left out of the copy (fix_data_dir.sh), and listed
        if len(skipped) == len(data.utt2spk):
            raise BabelflowError(f"{src}: every segment would be skipped, e.g. {next(iter(skipped.values()))}")
        data = data.subset(u for u in data.utt2spk if u not in skipped)
        log.warning("%s: %d segment(s) skipped (listed in skipped.tsv), e.g. %s", src, len(skipped),
                    next(iter(skipped.values())))
    try:
        split_keys_by_speaker(data.utt2spk, nj)  # fail before creating anything
    except BabelflowError as e:
        raise BabelflowError(f"{data.path / 'utt2spk'}: {e}") from None
    with atomic_dir(out_dir) as tmp:
        data.write(tmp)
        split_data(data, nj, tmp)
        write_skipped(tmp / "skipped.tsv", list(skipped.items()))
        write_info(tmp, {"num_utts": len(data.utt2spk), "num_spks": len(data.spk2utt), "nj": nj,
                         "num_skipped": len(skipped)})
    return {**summary, "nj": nj}
