"""nnet3 egs (NnetExample) and GeneralMatrix I/O against files written by real Kaldi binaries."""

from __future__ import annotations

import hashlib
import io
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from babelflow.errors import BabelflowError
from babelflow.kaldi.general_matrix import (
    SparseMatrix,
    compress_matrix,
    decompress_matrix,
    read_compressed_matrix,
    read_general_matrix,
    write_general_matrix,
)
from babelflow.kaldi.nnet_example import NnetExample, NnetIo, egs_to_text, read_egs, write_egs

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "kaldi-fixtures"
EGS = FIXTURES / "egs" / "lang0"
MERGED = FIXTURES / "am" / "lang0" / "merged_mb4.egs.txt"


@pytest.fixture(scope="module")
def fx() -> Path:
    if not (EGS / "egs.1.ark").is_file() or not MERGED.is_file():
        pytest.skip(f"Kaldi egs fixtures not found at {FIXTURES} (they live outside the repo, in /work/shared)")
    return EGS


@pytest.fixture(scope="module")
def cm_egs(fx) -> list[tuple[str, NnetExample]]:
    return list(read_egs(f"ark:{fx / 'egs.1.ark'}"))


@pytest.fixture(scope="module")
def fm_egs(fx) -> list[tuple[str, NnetExample]]:
    return list(read_egs(f"ark:{fx / 'egs_nocompress.1.ark'}"))


def _num(tok: str) -> float | None:
    try:
        return float(tok)
    except ValueError:
        return None


def assert_same_text(ours: str, kaldi: str, atol: float) -> None:
    """Token by token: non-numeric tokens identical, numbers within ``atol``."""
    a, b = ours.split(), kaldi.split()
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        fx_, fy = _num(x), _num(y)
        if fx_ is None or fy is None:
            assert x == y, f"token {i}: {x!r} != {y!r}"
        else:
            assert abs(fx_ - fy) <= atol, f"token {i}: {x} vs {y}"


def quant_tol(orig: np.ndarray) -> np.ndarray:
    """Per-column bound on CM's 1-byte error: half the widest step (63 levels over the column
    range) plus the uint16 quantisation of the column quantiles."""
    glob = float(orig.max() - orig.min())
    return (orig.max(0) - orig.min(0)) / 126 + 2 * glob / 65535 + 1e-5


# ----------------------------------------------------------------------------- reading vs Kaldi text
def test_compressed_ark_prints_as_kaldi_text(fx, cm_egs):
    assert len(cm_egs) == 28
    ours = "".join(egs_to_text(k, e) for k, e in cm_egs)
    kaldi = (fx / "egs.1.txt").read_text()
    assert_same_text(ours, kaldi, atol=1e-4)
    assert ours == kaldi  # stronger: the decoder is bit-exact, so even the printed digits agree
    k, e = cm_egs[0]
    assert [(n.name, n.features.shape) for n in e.io] == [("input", (16, 40)), ("output", (8, 18))]
    assert e.io[0].compressed[:3] == b"CM " and isinstance(e.io[1].features, SparseMatrix)
    assert e.io[0].indexes[:, 1].tolist() == list(range(-4, 12)) and not e.io[0].indexes[:, [0, 2]].any()


def test_uncompressed_ark_prints_as_kaldi_text(fx, fm_egs):
    ours = "".join(egs_to_text(k, e) for k, e in fm_egs)
    kaldi = (fx / "egs_nocompress.1.txt").read_text()
    assert_same_text(ours, kaldi, atol=1e-6)
    assert ours == kaldi
    assert all(e.io[0].compressed is None for _, e in fm_egs)


def test_egs_to_text_has_no_trailing_newline(fm_egs):
    k, e = fm_egs[0]
    text = egs_to_text(k, e)
    assert text.startswith(f"{k} <Nnet3Eg> <NumIo> 2 <NnetIo> input <I1V> 16 <I1> 0 -4 0 ")
    assert text.endswith("</NnetIo> </Nnet3Eg> ") and e.to_text() == text[len(k) + 1:]


def test_scp_reads_the_same_egs(fx, cm_egs, monkeypatch):
    monkeypatch.chdir(FIXTURES)  # egs.scp paths are relative to the fixture folder, as Kaldi wrote them
    via_scp = list(read_egs("scp:egs/lang0/egs.scp"))
    assert [k for k, _ in via_scp] == [k for k, _ in cm_egs]
    assert [e for _, e in via_scp] == [e for _, e in cm_egs]
    assert [n.compressed for _, e in via_scp for n in e.io] == [n.compressed for _, e in cm_egs for n in e.io]


def test_pipe_rspecifier(fx, fm_egs):
    assert list(read_egs(f"ark:cat {fx / 'egs_nocompress.1.ark'} |")) == fm_egs
    with pytest.raises(BabelflowError, match="failed"):
        list(read_egs(f"ark:cat {fx / 'no-such.ark'} |"))


# ----------------------------------------------------------------------------- writing
def test_binary_write_reproduces_uncompressed_ark(fx, fm_egs, tmp_path):
    out = tmp_path / "egs.ark"
    assert write_egs(f"ark:{out}", fm_egs) == len(fm_egs)
    assert out.read_bytes() == (fx / "egs_nocompress.1.ark").read_bytes()


def test_binary_write_keeps_compressed_matrices(fx, cm_egs, tmp_path):
    assert write_egs(f"ark,scp:{tmp_path / 'egs.1.ark'},{tmp_path / 'egs.scp'}", cm_egs) == 28
    assert (tmp_path / "egs.1.ark").read_bytes() == (fx / "egs.1.ark").read_bytes()
    ours = (tmp_path / "egs.scp").read_text().replace(str(tmp_path / "egs.1.ark"), "egs/lang0/egs.1.ark")
    assert ours == (fx / "egs.scp").read_text()  # same offsets as Kaldi's ark,scp writer


def test_text_write_reproduces_kaldi_text(fx, fm_egs, tmp_path):
    out = tmp_path / "egs.txt"
    write_egs(f"ark,t:{out}", fm_egs)
    assert out.read_bytes() == (fx / "egs_nocompress.1.txt").read_bytes()


def test_text_write_to_stdout(fm_egs, capfdbinary):
    write_egs("ark,t:-", fm_egs[:2])
    assert capfdbinary.readouterr().out.decode() == "".join(egs_to_text(k, e) for k, e in fm_egs[:2])


def test_text_archive_reads_as_the_binary(fx, fm_egs, cm_egs):
    for txt, binary in (("egs_nocompress.1.txt", fm_egs), ("egs.1.txt", cm_egs)):
        from_text = list(read_egs(f"ark:{fx / txt}"))
        assert [k for k, _ in from_text] == [k for k, _ in binary]
        for (_, a), (_, b) in zip(from_text, binary):
            assert [(n.name, n.indexes.tolist()) for n in a.io] == [(n.name, n.indexes.tolist()) for n in b.io]
            assert a.io[1].features == b.io[1].features  # sparse targets: exact
            np.testing.assert_allclose(a.io[0].features, b.io[0].features, rtol=1e-6, atol=1e-6)  # 7 digits


# ----------------------------------------------------------------------------- compression
def test_compression_is_kaldis_encoder(fx, cm_egs, fm_egs):
    """Compressing the uncompressed run's inputs gives Kaldi's CM bytes (keys present in both)."""
    fm = dict(fm_egs)
    shared = [(k, e) for k, e in cm_egs if k in fm]
    assert len(shared) >= 10
    for k, e in shared:
        assert compress_matrix(fm[k].io[0].features) == e.io[0].compressed, k
        assert compress_matrix(e.io[0].features) == e.io[0].compressed  # re-encoding decoded values is stable


def test_decoded_cm_agrees_with_fm(cm_egs, fm_egs):
    fm = dict(fm_egs)
    for k, e in cm_egs:
        if k in fm:
            orig = fm[k].io[0].features
            assert np.all(np.abs(e.io[0].features - orig) <= quant_tol(orig)), k
            assert not np.array_equal(e.io[0].features, orig)  # it really is lossy


@pytest.mark.parametrize("method,token", [("auto", b"CM "), ("CM", b"CM "), ("CM2", b"CM2 "), ("CM3", b"CM3 ")])
def test_compressed_write_read_round_trip(fm_egs, tmp_path, method, token):
    out = tmp_path / "c.ark"
    write_egs(f"ark:{out}", fm_egs, compress=method)
    data = out.read_bytes()
    assert data.count(token) == len(fm_egs) and b"FM " not in data
    back = list(read_egs(f"ark:{out}"))
    for (_, a), (_, b) in zip(back, fm_egs):
        orig, dec = b.io[0].features, a.io[0].features
        rng = float(orig.max() - orig.min())
        tol = {"CM2": rng / 65535, "CM3": rng / 255 * 0.51}.get(method)
        assert np.all(np.abs(dec - orig) <= (quant_tol(orig) if tol is None else tol + 1e-5))
        assert a.io[1].features == b.io[1].features and a.io[1].compressed is None
        assert np.array_equal(dec, decompress_matrix(compress_matrix(orig, method)))


def test_text_write_with_compression_prints_decoded_values(fm_egs):
    k, e = fm_egs[0]
    text = e.to_text(compress="CM")
    dec = decompress_matrix(compress_matrix(e.io[0].features, "CM"))
    back = NnetExample.read(io.BytesIO(text.encode()), False)
    np.testing.assert_allclose(back.io[0].features, dec, rtol=1e-6)


def _mat(rows: int, cols: int, seed: int) -> np.ndarray:
    a = np.arange(rows * cols, dtype=np.int64) * 7919 + seed * 104729
    return (((a % 1009) - 500) / np.float32(37.0)).astype(np.float32).reshape(rows, cols)


# Outputs of Kaldi's own CompressedMatrix (compressed-matrix.cc built as a test oracle) for _mat().
KALDI_GOLDEN = [
    (3, 4, "CM2", "434d32204c914fc18a7cc64103000000040000009f66f53b4a11ffff54d5aaaaff7f5555aa2a0000b5ee0ac4"),
    (3, 4, "CM3", "434d33204c914fc18a7cc6410300000004000000663c11ffd4aa7f552a00eec3"),
    (3, 4, "CM", "434d204c914fc18a7cc6410300000004000000aa2a9f6654d555d50000f53baaaaabaa4a11ff7fb5eeb6ee55550ac4"
                 "feffffff40e00040c0000040c0ff0040"),
    (12, 3, "auto", "434d20e4b34ec1eb06d3410c000000030000004310de5742d0ffff00009b47ffbfc8f09b076438a7c864f874008d1"
                    "5a72bc040e059ff735aff74008d15a72bc040df5940c055df6aff8000951faa3f"),
    (5, 2, "CM", "434d20ad1b3cc18a7cc6410500000002000000000055550ac4ffffaa2aff7f54d5b5eeffa34000c0c04000ff66"),
    (40, 7, "CM3", "sha256:4c9d3f203cb6a3eda84f18b450a22f99419eba1a99c7060a74ee8744aa8f5165"),
    (7, 3, "CM", "sha256:4941c590c751c2496b6188441231a00b478c9f458c5bdd6e3fda51cfcb55c458"),
    (10, 4, "CM", "sha256:fb713ba66a1e266507aef8970358001c9eac8a252901ca0c4e099a1e3e5da046"),
    (17, 2, "CM", "sha256:8f2b72db69da9b81ab21148bc3337da76cc4ff1ef4e4faeadabf09f3a2a9843a"),
    (36, 5, "auto", "sha256:0db4afed46dcdb483655bd9abf5d4bcd649fbf8f058883bd7b9e72db275ba12b"),
    (8, 3, "auto", "sha256:1f7674bc61523df99bf3b099402e3e1617d29019a877c72d9ab66582bf08501a"),
    (4, 2, "CM", "sha256:db7619f60c51dfcd60c79d5f810bbbb96a2eb8777b832888d4341387bf3857a5"),
    (2, 3, "CM", "sha256:d75d318ddc56d2bac19d81e7d83665ee3fac429b4662639e44250d9692aa0bb9"),
    (1, 3, "CM", "sha256:f70a117146db1dc02842241db07e9b0fc43922cf6d94223af9a107fd65bd2177"),
]


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("rows,cols,method,expected", KALDI_GOLDEN)
def test_compression_matches_kaldi_golden_bytes(rows, cols, method, expected):
    data = compress_matrix(_mat(rows, cols, rows), method)
    assert (_sha(data) if expected.startswith("sha256:") else data.hex()) == expected


def test_compression_clamps_quantiles_like_kaldi():
    m = _mat(9, 2, 9)
    m[:, 1] = m.max()  # a column at the global max: its quantile codes are clamped below 65535
    data = compress_matrix(m, "CM")
    assert _sha(data) == "sha256:87e5628f0ed02895e59b01472c0a9d05cf5e3a93ecec8703ca8abfc2121c0c81"
    assert np.frombuffer(data[27:35], "<u2").tolist() == [65532, 65533, 65534, 65535]


def _cm(tok: bytes, mn: float, rng: float, rows: int, cols: int, body: bytes) -> bytes:
    return tok + b" " + struct.pack("<ffii", mn, rng, rows, cols) + body


# Every byte / uint16 code, decoded by Kaldi's CompressedMatrix::CopyToMat (float32 bytes hashed).
KALDI_DECODED = [
    (_cm(b"CM", -3.7, 11.3, 256, 3, np.array([[0, 1000, 40000, 65535], [123, 124, 125, 60000],
                                              [5000, 30000, 30001, 65000]], "<u2").tobytes()
         + np.tile(np.arange(256, dtype=np.uint8), 3).tobytes()),
     "sha256:c3fab5350f1bcdb34073ffd6b3ca0b149e3dff3cc504e8629b3c151acaaee618"),
    (_cm(b"CM2", -123.456, 789.01, 256, 256, np.arange(65536, dtype="<u2").tobytes()),
     "sha256:738bba272879028c909820a059cdf56ddb8514fede235e954de6c5e38e5ef765"),
    (_cm(b"CM3", 0.3, 0.7, 16, 16, np.arange(256, dtype="u1").tobytes()),
     "sha256:a4b0eb5f4aa17bc4ddaa4d7fbcfe7ba37d8e0c18c621eb3b07360bff717d31b7"),
]


@pytest.mark.parametrize("data,expected", KALDI_DECODED, ids=["CM", "CM2", "CM3"])
def test_decoding_matches_kaldi_bit_for_bit(data, expected):
    assert _sha(decompress_matrix(data).astype("<f4").tobytes()) == expected


def test_constant_matrix_compression_matches_kaldi():
    c = np.full((4, 3), -2.5, np.float32)
    assert compress_matrix(c, "CM2").hex() == "434d3220000020c00000604004000000030000" + "00" * 25
    assert compress_matrix(c, "CM").hex() == ("434d20000020c0000060400400000003000000" + "0000010002000300" * 3
                                              + "00" * 12)
    for method in ("CM", "CM2", "CM3"):
        assert np.array_equal(decompress_matrix(compress_matrix(c, method)), c)


def test_compress_rejects_bad_input():
    with pytest.raises(ValueError):
        compress_matrix(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        compress_matrix(np.ones((2, 2)), "CM4")
    with pytest.raises(BabelflowError):
        compress_matrix(np.array([[1.0, np.nan]]))


# ----------------------------------------------------------------------------- merged minibatches
def test_merged_minibatch_text_binary_round_trip(fx, tmp_path):
    original = MERGED.read_bytes()
    egs = list(read_egs(f"ark:{MERGED}"))
    assert [k for k, _ in egs] == [f"merged-{i}-4" for i in range(7)]
    assert sorted(set(egs[0][1].io[0].indexes[:, 0].tolist())) == [0, 1, 2, 3]
    write_egs(f"ark:{tmp_path / 'm.ark'}", egs)
    binary = (tmp_path / "m.ark").read_bytes()
    # each change of n is written as 127 + (n, t, x) as three binary int32s
    for n in (1, 2, 3):
        assert binary.count(b"\x7f" + struct.pack("<bibibi", 4, n, 4, -4, 4, 0)) == 7  # input, t = -4
        assert binary.count(b"\x7f" + struct.pack("<bibibi", 4, n, 4, 0, 4, 0)) == 7  # output, t = 0
    assert binary.count(b"<I1V> \x04\x40\x00\x00\x00\xfc" + b"\x01" * 15 + b"\x7f") == 7
    back = list(read_egs(f"ark:{tmp_path / 'm.ark'}"))
    assert back == egs
    write_egs(f"ark,t:{tmp_path / 'm.txt'}", back)
    assert (tmp_path / "m.txt").read_bytes() == original


@pytest.mark.parametrize("indexes,compact", [
    ([(0, 124, 0), (0, 0, 0), (0, 124, 0)], True),
    ([(0, 125, 0), (0, 0, 0)], False),
    ([(0, -124, 0), (0, 0, 0), (0, -125, 0)], False),
    ([(0, 0, 1), (0, 1, 1)], False),
    ([(-3, 7, 2), (-3, 8, 2), (5, 8, 2), (5, 2**31 - 1, 0)], False),
])
def test_index_vector_binary_round_trip(indexes, compact):
    eg = NnetExample([NnetIo("x", indexes, np.arange(len(indexes) * 2, dtype=np.float32).reshape(-1, 2))])
    buf = io.BytesIO()
    eg.write(buf, True)
    start = buf.getvalue().index(b"<I1V> ") + 11
    assert (buf.getvalue()[start:start + len(indexes)] != b"" and
            (b"\x7f" not in buf.getvalue()[start:start + len(indexes)]) == compact)
    buf.seek(0)
    assert NnetExample.read(buf, True) == eg
    assert NnetExample.read(io.BytesIO(eg.to_text().encode()), False) == eg


# ----------------------------------------------------------------------------- general matrix
def test_general_matrix_kinds():
    s = SparseMatrix.from_rows([(5, [(1, 0.5), (4, 2.0)]), (5, []), (5, [(0, 1.0)])])
    dense = s.to_dense()
    assert dense.shape == (3, 5) and dense[0, 4] == 2.0 and SparseMatrix.from_dense(dense) == s
    for binary in (True, False):
        buf = io.BytesIO()
        write_general_matrix(buf, binary, s)
        assert buf.getvalue().startswith(b"SM " if binary else b"rows=3 dim=5 [ 1 0.5 4 2 ] dim=5 [ ] ")
        buf.seek(0)
        assert read_general_matrix(buf, binary) == s
    dm = b"DM \x04\x02\x00\x00\x00\x04\x01\x00\x00\x00" + np.array([1.5, -2.25], "<f8").tobytes()
    got = read_general_matrix(io.BytesIO(dm), True)
    assert got.dtype == np.float32 and got.tolist() == [[1.5], [-2.25]]
    assert read_general_matrix(io.BytesIO(b" [ 1 2 ; 3 4 ]\n"), False).tolist() == [[1, 2], [3, 4]]
    assert read_general_matrix(io.BytesIO(b" [ ]\n"), False).shape == (0, 0)
    cm = compress_matrix(_mat(3, 4, 3), "CM2")
    f = io.BytesIO(cm[4:])
    assert np.array_equal(read_compressed_matrix(f, "CM2"), decompress_matrix(cm)) and f.read() == b""
    with pytest.raises(BabelflowError):
        read_general_matrix(io.BytesIO(b" [ 1 2 \n 3 ]\n"), False)


# ----------------------------------------------------------------------------- errors
def _entry_starts(fx: Path) -> dict[int, str]:
    starts = {}
    for line in (fx / "egs.scp").read_text().splitlines():
        key, rx = line.split()
        starts[int(rx.rsplit(":", 1)[1]) - len(key) - 1] = key
    return starts


def test_truncated_binary_archive(fx, tmp_path):
    data = (fx / "egs.1.ark").read_bytes()
    starts = _entry_starts(fx)
    mid, last = sorted(starts)[14], max(starts)
    for cut in (7, 30, 60, 200, 1200, mid + 7, mid + 8, mid + 600, last + 1000, len(data) - 15, len(data) - 1):
        key = starts[max(s for s in starts if s < cut)]
        assert cut not in starts and cut - max(s for s in starts if s < cut) > len(key)  # cut inside the object
        p = tmp_path / f"cut{cut}.ark"
        p.write_bytes(data[:cut])
        with pytest.raises(BabelflowError) as e:
            list(read_egs(f"ark:{p}"))
        assert f"ark:{p}" in str(e.value) and f"'{key}'" in str(e.value), (cut, str(e.value))


def test_every_truncation_and_corruption_is_a_babelflow_error(fx, tmp_path):
    data = (fx / "egs.1.ark").read_bytes()[:2627 + 300]
    p = tmp_path / "x.ark"
    rng = np.random.default_rng(7)
    variants = [data[:cut] for cut in range(1, 1400)]
    for _ in range(300):
        b = bytearray(data)
        b[int(rng.integers(0, 1320))] = int(rng.integers(0, 256))
        variants.append(bytes(b))
    errors = 0
    for v in variants:
        p.write_bytes(v)
        try:
            list(read_egs(f"ark:{p}"))
        except BabelflowError:
            errors += 1  # anything else (struct.error, IndexError, ...) fails the test
    assert errors > 1300


@pytest.mark.parametrize("junk", [b"\x00\x01\x02\xff" * 50, b"en1-99 \x00B<Nnet3Eg> garbage", b"k \x00X"])
def test_garbage_bytes(fx, tmp_path, junk):
    data = (fx / "egs.1.ark").read_bytes()
    p = tmp_path / "g.ark"
    p.write_bytes(data[:1310] + junk)
    with pytest.raises(BabelflowError, match=re.escape(f"ark:{p}")) as e:
        list(read_egs(f"ark:{p}"))
    assert "key" in str(e.value)


def test_wrong_token(fx, tmp_path):
    data = (fx / "egs_nocompress.1.ark").read_bytes()
    p = tmp_path / "w.ark"
    p.write_bytes(data.replace(b"</Nnet3Eg>", b"</Nnet3Xg>", 2))
    with pytest.raises(BabelflowError, match=r"key 'en1-0'.*</Nnet3Eg>"):
        list(read_egs(f"ark:{p}"))
    text = (fx / "egs.1.txt").read_bytes().replace(b"<NnetIo> output", b"<NnetIO> output", 1)
    p.write_bytes(text)
    with pytest.raises(BabelflowError, match=r"key 'en1-0'.*<NnetIo>"):
        list(read_egs(f"ark,t:{p}"))


def test_index_count_must_match_rows(fx, tmp_path):
    text = (fx / "egs.1.txt").read_bytes()
    p = tmp_path / "i.txt"
    p.write_bytes(text.replace(b"output <I1V> 8 <I1> 0 0 0 ", b"output <I1V> 7 ", 1))
    with pytest.raises(BabelflowError, match=r"key 'en1-0'.*7 indexes.*8 rows"):
        list(read_egs(f"ark:{p}"))
    data = (fx / "egs_nocompress.1.ark").read_bytes()
    head = b"output <I1V> \x04\x08\x00\x00\x00"
    i = data.index(head)
    p.write_bytes(data[:i] + b"output <I1V> \x04\x07\x00\x00\x00" + data[i + len(head):i + len(head) + 7]
                  + data[i + len(head) + 8:])
    with pytest.raises(BabelflowError, match=r"key 'en1-0'.*7 indexes.*8 rows"):
        list(read_egs(f"ark:{p}"))


def test_writer_errors(fm_egs, tmp_path):
    k, e = fm_egs[0]
    bad = NnetExample([NnetIo("input", e.io[0].indexes[:-1], e.io[0].features)])
    with pytest.raises(BabelflowError, match="key 'bad'"):
        write_egs(f"ark:{tmp_path / 'x.ark'}", [("ok", e), ("bad", bad)])
    assert not (tmp_path / "x.ark").exists()  # atomic: nothing half-written
    with pytest.raises(BabelflowError, match="invalid key"):
        write_egs(f"ark:{tmp_path / 'y.ark'}", [("a b", e)])
    with pytest.raises(BabelflowError, match="wspecifier"):
        write_egs(f"scp:{tmp_path / 'y.scp'}", [(k, e)])


def test_scp_bad_offset(fx, tmp_path):
    scp = tmp_path / "bad.scp"
    scp.write_text(f"en1-0 {fx / 'egs.1.ark'}:6\nen1-7 {fx / 'egs.1.ark'}:1317\n")
    with pytest.raises(BabelflowError, match="key 'en1-7'"):
        list(read_egs(f"scp:{scp}"))
