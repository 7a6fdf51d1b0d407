"""A frame task model's phone accuracy against *true* alignments (the demo's synthesiser timings).

Valid accuracy compares the network with the labels it was trained on. When those labels
come from a GMM (``ali: auto``), the question that matters is different: how well does the
network recover the true phones? Each frame's argmax pdf is mapped to its phone through the
model's TransitionModel and ``phones.txt``, and compared by phone *symbol* with the reference
alignment dir, over the task's held-out (valid) utterances — so models trained on true and
on GMM alignments, whose pdfs differ, are scored on the same footing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..data.datadir import read_utt2spk
from ..data.featsdir import FeatsDir
from ..errors import BabelflowError
from ..features import apply_cmvn, parse_cmvn_opts
from ..gmm.compare import utterance_segments
from ..io import read_table
from ..kaldi.alignments import AlignmentDir
from ..kaldi.transition_model import read_transition_model
from .batching import BATCH_FRAMES, resolve_device
from .infer import outputs
from .modeldir import ModelDir


def pdf_to_phone(tm) -> np.ndarray:
    """The phone of each pdf (the most frequent one when a tree shares a pdf between phones)."""
    pdf, phone = tm.transition_id_to_pdf()[1:], tm.transition_id_to_phone()[1:]
    votes = np.zeros((tm.num_pdfs, int(phone.max()) + 1), np.int64)
    np.add.at(votes, (pdf, phone), 1)
    return votes.argmax(1)


def phone_accuracy(model_dir: str | os.PathLike, feats_dir: str | os.PathLike, data_dir: str | os.PathLike,
                   ref_ali_dir: str | os.PathLike, batch_frames: int = BATCH_FRAMES, device: str = "auto") -> dict:
    """``valid_phone_accuracy`` (frames whose predicted phone symbol is the reference's) and the frames counted."""
    md = ModelDir(model_dir)
    model, blob = md.load()
    if blob["kind"] != "frame":
        raise BabelflowError(f"{model_dir}: phone accuracy is for frame tasks")
    phones_txt = md.path / "phones.txt"
    if not phones_txt.is_file():
        raise BabelflowError(f"{phones_txt}: missing (split copies it from the alignment dir)")
    symbols = {int(v[0]): k for _, k, v in read_table(phones_txt, 2, 2)}
    to_phone = pdf_to_phone(read_transition_model(md.trans_mdl))
    ref = utterance_segments(AlignmentDir(ref_ali_dir))
    valid = [k for _, k, _ in read_table(Path(blob["egs_dir"]) / "valid_uttlist", 1, 1)]
    feats = FeatsDir(feats_dir)
    means, variances = parse_cmvn_opts(blob["cmvn_opts"])
    stats = feats.cmvn_stats() if means else {}
    spk = read_utt2spk(Path(data_dir) / "utt2spk") if means else {}
    model.eval().to(resolve_device(device))

    def features() -> Iterator[tuple[str, np.ndarray]]:  # the valid utterances, as the model reads them
        for utt in valid:
            if utt not in ref:
                continue
            x = np.asarray(feats.load(utt), np.float32)
            if means:
                key = spk.get(utt, utt)
                if key not in stats:
                    raise BabelflowError(f"{feats.cmvn_scp}: no CMVN stats for '{key}' (utterance '{utt}')")
                x = apply_cmvn(x, stats[key], means, variances)
            yield utt, x

    agree = frames = 0
    for utt, out in outputs(model, features(), batch_frames=batch_frames):
        pred = [symbols[int(p)] for p in to_phone[out.argmax(1)]]
        truth = ref[utt].frame_phones
        n = min(len(pred), len(truth))
        agree += sum(a == b for a, b in zip(pred[:n], truth[:n]))
        frames += max(len(pred), len(truth))
    if not frames:
        raise BabelflowError(f"{ref_ali_dir}: none of the task's valid utterances is aligned there")
    return {"valid_phone_accuracy": agree / frames, "valid_phone_frames": frames}
