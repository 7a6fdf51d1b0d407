"""The features step (Kaldi ``make_fbank.sh``/``make_mfcc.sh`` + ``compute_cmvn_stats.sh``).

Contract: a validated data dir (with ``split<nj>/``) -> a features dir::

    raw_<type>.<job>.{ark,scp}   one archive per job (one Snakemake job each)
    feats.scp  utt2num_frames    merged over jobs, sorted
    cmvn.{ark,scp}               per-speaker stats, Kaldi's 2 x (dim+1) layout
    cmvn_opts                    how egs will apply them
    conf/<type>.conf             the full option set, Kaldi conf format
    info/{feat_type,feat_dim,sample_frequency,frame_shift,num_utts,num_frames}
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.datadir import read_spk2utt, read_utt2spk
from .errors import BabelflowError
from .features import FeatureConfig, FeatureExtractor, cmvn_stats, iter_audio, parse_cmvn_opts
from .io import read_skipped, read_table, write_info, write_skipped, write_table, write_text
from .tables import AtomicArkScpWriter, open_matrix_writer


def compute_feats(config: FeatureConfig, wav_rspecifier: str, feats_wspecifier: str,
                  segments: str | None = None, utt2num_frames: str | os.PathLike | None = None,
                  progress: bool = True, skipped_tsv: str | os.PathLike | None = None) -> int:
    """compute-{fbank,mfcc}-feats: audio rspecifier -> feature wspecifier. Returns #utterances. Segments
    skipped as ``extract-segments`` skips them are listed in ``skipped_tsv`` (utterance, reason)."""
    extract = FeatureExtractor(config)
    frames: list[tuple[str, int]] = []
    skipped: list[tuple[str, str]] = []
    with open_matrix_writer(feats_wspecifier) as writer:
        for key, rate, samples in tqdm(iter_audio(wav_rspecifier, segments, skipped), desc=f"{config.feat_type}",
                                       unit="utt", disable=not progress, mininterval=2.0):
            feats = extract(samples, rate, key)
            writer[key] = feats
            frames.append((key, feats.shape[0]))
    if not frames:
        raise BabelflowError(f"'{wav_rspecifier}': no utterances"
                             + (f" (every segment skipped, e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    if utt2num_frames is not None:
        write_table(utt2num_frames, frames)
    if skipped_tsv is not None:
        write_skipped(skipped_tsv, skipped)
    return len(frames)


def feats_job(config: FeatureConfig, split_dir: str | os.PathLike, out_dir: str | os.PathLike, job: int,
              progress: bool = True) -> int:
    """One job of the features step: ``split_dir`` is ``<data>/split<nj>/<job>``."""
    split_dir, out_dir = Path(split_dir), Path(out_dir)
    segments = split_dir / "segments"
    ark = out_dir / f"raw_{config.feat_type}.{job}.ark"
    return compute_feats(config, f"scp:{split_dir / 'wav.scp'}", f"ark,scp:{ark},{ark.with_suffix('.scp')}",
                         segments=str(segments) if segments.exists() else None,
                         utt2num_frames=out_dir / f"utt2num_frames.{job}", progress=progress,
                         skipped_tsv=out_dir / f"skipped.{job}.tsv")


def finalize_feats_dir(config: FeatureConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       nj: int, cmvn_opts: str) -> dict:
    """Merge the per-job scps, check every utterance got features, write CMVN stats and ``info/``."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    parse_cmvn_opts(cmvn_opts)  # fail now, not when egs are made
    scp: dict[str, str] = {}
    nframes: dict[str, str] = {}
    for job in range(1, nj + 1):
        part = out_dir / f"raw_{config.feat_type}.{job}.scp"
        for _, key, rest in read_table(part):
            scp[key] = rest[0]
        for _, key, rest in read_table(out_dir / f"utt2num_frames.{job}", 2, 2):
            nframes[key] = rest[0]
    skipped: dict[str, str] = {}
    for job in range(1, nj + 1):
        skipped.update(read_skipped(out_dir / f"skipped.{job}.tsv"))
    utt2spk = read_utt2spk(data_dir / "utt2spk")
    missing = sorted(set(utt2spk) - set(scp) - set(skipped))
    if missing:
        raise BabelflowError(f"{out_dir}: no features for {len(missing)} utterance(s) of {data_dir}, "
                             f"e.g. '{missing[0]}'")
    keys = sorted(scp)  # C-locale order, as Kaldi's sort
    write_table(out_dir / "feats.scp", [(k, scp[k]) for k in keys])
    write_table(out_dir / "utt2num_frames", [(k, nframes[k]) for k in keys])
    spk2utt = read_spk2utt(data_dir / "spk2utt")
    with AtomicArkScpWriter(out_dir / "cmvn.ark", out_dir / "cmvn.scp") as w:
        for spk in sorted(spk2utt):
            utts = [u for u in spk2utt[spk] if u in scp]
            if utts:  # a speaker whose every segment was skipped has no stats (and no features to apply them to)
                w[spk] = cmvn_stats(_load_feats(scp, utts))
    write_text(out_dir / "cmvn_opts", cmvn_opts.strip() + "\n")
    write_text(out_dir / "conf" / f"{config.feat_type}.conf", config.to_conf())
    write_skipped(out_dir / "skipped.tsv", list(skipped.items()))
    total = sum(int(nframes[k]) for k in keys)
    info = {"feat_type": config.feat_type, "feat_dim": config.dim, "sample_frequency": config.sample_frequency,
            "frame_shift": config.options["frame_shift"], "num_utts": len(keys), "num_frames": total,
            "num_skipped": len(skipped)}
    write_info(out_dir, info)
    return info


def _load_feats(scp: dict[str, str], utts: list[str]):
    import kaldiio

    for u in utts:
        yield np.asarray(kaldiio.load_mat(scp[u]))


def import_feats_dir(src: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                     cmvn_opts: str, config: FeatureConfig | None = None) -> dict:
    """Adopt features Kaldi already made (a data dir after make_mfcc.sh + compute_cmvn_stats.sh) as a
    features dir: ``feats.scp`` points at the user's archives (never copied), CMVN stats are copied into
    ``cmvn.ark``, ``utt2num_frames`` and ``info/`` written. Every matrix is read once: an unreadable
    entry, NaN or Inf (named by utterance and frame), a dimension that changes, or an utterance of the
    data dir without features is an error, and nothing is left behind."""
    from .data.featsdir import FeatsDir

    src, data_dir, out_dir = Path(src), Path(data_dir), Path(out_dir)
    parse_cmvn_opts(cmvn_opts)
    fd = FeatsDir(src, adopt=True)
    utt2spk = read_utt2spk(data_dir / "utt2spk")
    missing = sorted(set(utt2spk) - set(fd.feats))
    if missing:
        raise BabelflowError(f"{fd.feats_scp}: no features for {len(missing)} utterance(s) of {data_dir}, "
                             f"e.g. '{missing[0]}'")
    dim, frames, handles = None, {}, {}
    for utt in tqdm(sorted(utt2spk), desc="import feats", unit="utt", mininterval=2.0):
        try:
            m = np.asarray(fd.load(utt, handles))
        except Exception as e:  # noqa: BLE001 - kaldiio raises many types for damaged arks
            why = f"{type(e).__name__}: {e}" if str(e) else "truncated or corrupt archive"
            raise BabelflowError(f"{fd.feats_scp}: utterance '{utt}' ({fd.feats[utt]}): unreadable ({why})") from None
        if m.ndim != 2 or (dim is not None and m.shape[1] != dim):
            raise BabelflowError(f"{fd.feats_scp}: utterance '{utt}': shape {m.shape}, the others have {dim} columns")
        bad = ~np.isfinite(m)
        if bad.any():
            frame = int(np.argwhere(bad)[0][0])
            what = "NaN" if np.isnan(m[frame]).any() else "Inf"
            raise BabelflowError(f"{fd.feats_scp}: utterance '{utt}': {what} in frame {frame}")
        dim, frames[utt] = m.shape[1], m.shape[0]
    for f in handles.values():
        f.close()
    stats = fd.cmvn_stats()
    spk2utt = read_spk2utt(data_dir / "spk2utt")
    lost = sorted(s for s in spk2utt if s not in stats)
    if lost:
        raise BabelflowError(f"{fd.cmvn_scp}: no CMVN stats for speaker(s) {', '.join(lost[:5])}")
    # each file atomic (the rule's outputs): checked in full above, so none is written from a bad source
    with AtomicArkScpWriter(out_dir / "cmvn.ark", out_dir / "cmvn.scp") as w:
        for spk in sorted(spk2utt):
            w[spk] = np.asarray(stats[spk])
    write_table(out_dir / "utt2num_frames", sorted(frames.items()))
    write_text(out_dir / "cmvn_opts", cmvn_opts.strip() + "\n")
    if config is not None:
        write_text(out_dir / "conf" / f"{config.feat_type}.conf", config.to_conf())
    info = {"feat_type": config.feat_type if config else (fd.feat_type or "unknown"), "feat_dim": dim,
            "num_utts": len(frames), "num_frames": sum(frames.values()), "imported_from": str(src)}
    write_info(out_dir, info)
    write_table(out_dir / "feats.scp", [(u, fd.feats[u]) for u in sorted(utt2spk)])  # last: the step's mark
    return info

