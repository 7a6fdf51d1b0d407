"""The fast paths of the egs writer give what the plain ones give, byte for byte.

``babelflow egs job`` reads matrices in place from memory-mapped arks, converts float32 to
float16 with integer passes, and writes batches of utterances at once; each is checked here
against the plain path it replaces (kaldiio, numpy's cast, one segment at a time). That whole
egs dirs stay the same is ``test_golden_chain``'s part (hashes of a demo chain's egs).
"""

from __future__ import annotations

import numpy as np
import pytest

from babelflow.egs.arks import KaldiArks
from babelflow.egs.chunking import batch_starts, chunk_draw, chunk_starts
from babelflow.egs.format import ArchiveWriter, PartWriter, _float_to_half


def test_float_to_half_is_numpys_cast():
    f16 = np.finfo(np.float16)
    edges = np.array([0.0, f16.smallest_subnormal, f16.smallest_normal, f16.max, 65519.99, 65520.0, 65536.0, 1e9,
                      np.inf, np.nan, 1.0, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 2049.0, 2051.0, 3.14159],
                     np.float32)
    bits = np.random.default_rng(0).integers(0, 2**32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    near = (edges.view(np.uint32)[:, None] + np.arange(-3, 4, dtype=np.int64)[None, :]).astype(np.uint32)
    x = np.concatenate([bits, near.ravel(), (near.ravel() | 0x80000000).astype(np.uint32)])
    out = np.empty(len(x), np.uint16)
    with np.errstate(over="ignore", invalid="ignore"):
        _float_to_half(x, out, np.empty_like(x), np.empty_like(x), np.empty(len(x), bool))
        expected = x.view(np.float32).astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(out, expected)


@pytest.fixture
def arks(tmp_path):
    """A few Kaldi tables (raw float32 and float64, compressed, int vectors) as key -> rxfilename."""
    import kaldiio

    from babelflow.kaldi.alignments import write_int_vectors

    rng = np.random.default_rng(1)
    mats = {f"u{i}": rng.standard_normal((n, 5)).astype(np.float32) for i, n in enumerate([7, 0, 1, 40])}
    rx = {}
    for name, kw in {"raw": {}, "cm": {"compression_method": 2}}.items():
        with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/{name}.ark,{tmp_path}/{name}.scp", **kw) as w:
            for k, m in mats.items():
                if len(m) or name == "raw":  # kaldiio cannot compress an empty matrix
                    w(k, m)
        rx |= {f"{name}-{k}": v for k, v in (line.split(None, 1) for line in (tmp_path / f"{name}.scp").open())}
    with kaldiio.WriteHelper(f"ark,scp:{tmp_path}/f64.ark,{tmp_path}/f64.scp") as w:
        w("x", mats["u3"].astype(np.float64))
    rx["f64"] = (tmp_path / "f64.scp").read_text().split()[1]
    vecs = {f"v{i}": rng.integers(0, 500, n).astype(np.int32) for i, n in enumerate([9, 0, 1, 100])}
    write_int_vectors(f"ark,scp:{tmp_path}/ali.ark,{tmp_path}/ali.scp", vecs.items())
    rx |= {f"ali-{k}": v for k, v in (line.split(None, 1) for line in (tmp_path / "ali.scp").open())}
    return {k: v.strip() for k, v in rx.items()}


def test_kaldi_arks_read_as_kaldiio(arks):
    import kaldiio

    reader = KaldiArks()
    for key, rx in arks.items():
        got = reader.int_vector(rx) if key.startswith("ali") else reader.matrix(rx)
        want = kaldiio.load_mat(rx)
        if key.startswith("ali"):
            want = np.asarray(want, np.int32)
        assert got.dtype == want.dtype and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
        reader.release()  # the arrays read stay valid once their pages are unmapped
        np.testing.assert_array_equal(got, want, err_msg=key)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 7e4 in float16, as numpy's cast warns
@pytest.mark.parametrize("dtype", ["float16", "float32"])
@pytest.mark.parametrize("frame", [True, False])
def test_batches_write_what_segments_write(tmp_path, dtype, frame):
    """PartWriter (batches of segments to the parts they belong to) against ArchiveWriter.add_segment +
    add_examples one segment at a time, with i-vectors and the shuffled index."""
    from babelflow.egs.format import LABEL_DTYPE

    rng = np.random.default_rng(2)
    dim, ivec_dim, parts_of = 6, 3, [("train",), ("valid",), ("train", "train_diagnostic")]
    segs = []
    for i in range(40):
        feats = (rng.standard_normal((int(rng.integers(9, 60)), dim)) * 10).astype(np.float32)
        if i == 5:
            feats[0, :3] = [0.0, 1e-7, 7e4]  # values numpy's cast takes care of
        n = int(rng.integers(1, 5))
        t0 = np.sort(rng.integers(0, len(feats) - 8, n)).astype(np.int32)
        sizes = np.full(n, 8, np.int32) if frame else rng.integers(1, 9, n).astype(np.int32)
        labels = np.zeros(8 * n, LABEL_DTYPE)
        labels["pdf"], labels["weight"] = rng.integers(-1, 50, 8 * n), rng.random(8 * n)
        segs.append((f"k{i}", parts_of[int(rng.integers(3))], feats, t0, sizes, labels.reshape(n, 8),
                     rng.integers(0, 4, n), rng.standard_normal((n, ivec_dim)).astype(np.float32)))

    def writers(root):
        return {part: ArchiveWriter(root / part, dim, dtype, frame, ivec_dim, shuffle_seed=7)
                for part in ("train", "valid", "train_diagnostic")}

    one = writers(tmp_path / "one")
    for key, parts, feats, t0, sizes, labels, classes, ivec in segs:
        for part in parts:
            seg = one[part].add_segment(key, feats)
            one[part].add_examples(seg, t0, sizes, labels=labels.ravel() if frame else None,
                                   classes=None if frame else classes, ivectors=ivec)
    batched = writers(tmp_path / "batch")
    out = PartWriter(batched)
    for lo, hi in ((0, 1), (1, 17), (17, 40)):
        batch = list(zip(*segs[lo:hi]))
        key, parts, feats, t0, sizes, labels, classes, ivec = batch
        out.write(list(parts), list(key), list(feats), np.array([len(t) for t in t0]), np.concatenate(t0),
                  np.concatenate(sizes), labels=np.concatenate(labels) if frame else None,
                  classes=None if frame else np.concatenate(classes), ivectors=np.concatenate(ivec))
    for w in [*one.values(), *batched.values()]:
        w.close()
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "batch").iterdir()) and len(files) == 3 * (4 + frame)
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "batch" / name).read_bytes(), name


def test_batched_chunk_starts_are_per_utterance_ones():
    for f in (1, 3, 8, 13):
        rng = np.random.default_rng(f)
        lengths = rng.integers(f, 400, 300)
        state = rng.bit_generator.state
        draws = [chunk_draw(int(n), f, rng) for n in lengths]
        rng.bit_generator.state = state
        each = np.concatenate([chunk_starts(int(n), f, rng) for n in lengths])
        batch = batch_starts(lengths, [d[0] for d in draws], [d[1] for d in draws], f)
        np.testing.assert_array_equal(batch, each)
