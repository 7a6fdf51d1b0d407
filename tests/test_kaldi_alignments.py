"""Alignment tables, ali-to-pdf and alignment dirs against output of real Kaldi binaries."""

from __future__ import annotations

import gzip
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from babelflow.errors import BabelflowError
from babelflow.kaldi.alignments import (
    AlignmentDir,
    ali_to_pdf,
    read_int_vectors,
    read_pdf_alignments,
    write_int_vectors,
)


@pytest.fixture
def lang0(kaldi_fixtures) -> Path:
    return kaldi_fixtures / "lang0"


def parse_text_table(path: Path) -> dict[str, list[int]]:
    return {k: [int(x) for x in rest] for k, *rest in (l.split() for l in path.read_text().splitlines())}


def as_text(items) -> bytes:
    return b"".join(f"{k} {''.join(f'{x} ' for x in v.tolist())}\n".encode() for k, v in items)


def copy_ali_dir(src: Path, dst: Path, num_jobs: int = 1) -> Path:
    dst.mkdir()
    for name in ("ali.1.gz", "final.mdl", "phones.txt"):
        shutil.copyfile(src / name, dst / name)  # copyfile: the fixtures are read-only
    (dst / "num_jobs").write_text(f"{num_jobs}\n")
    return dst


def gz_rspec(path: Path) -> str:
    return f"ark:gunzip -c {path}|"


def test_ali_to_pdf_text_matches_kaldi(lang0, tmp_path):
    out = tmp_path / "pdf.txt"
    assert ali_to_pdf(lang0 / "final.mdl", gz_rspec(lang0 / "ali.1.gz"), f"ark,t:{out}") == 2
    assert out.read_bytes() == (lang0 / "pdf_ali.txt").read_bytes()


def test_ali_to_pdf_to_stdout(lang0, capsysbinary):
    assert ali_to_pdf(lang0 / "0.mdl", gz_rspec(lang0 / "ali.1.gz"), "ark,t:-") == 2
    assert capsysbinary.readouterr().out == (lang0 / "pdf_ali.txt").read_bytes()


def test_ali_to_pdf_binary_and_scp(lang0, tmp_path):
    ark, scp = tmp_path / "pdf.ark", tmp_path / "pdf.scp"
    ali_to_pdf(lang0 / "final.mdl", f"ark:{lang0 / 'ali.txt'}", f"ark,scp:{ark},{scp}")
    expected = parse_text_table(lang0 / "pdf_ali.txt")
    raw = ark.read_bytes()
    n = len(expected["en1"])
    assert raw.startswith(b"en1 \0B\x04" + struct.pack("<i", n) + b"\x04" + struct.pack("<i", expected["en1"][0]))
    assert len(raw) == sum(len(k) + 1 + 2 + 5 * (len(v) + 1) for k, v in expected.items())
    assert scp.read_text() == f"en1 {ark}:4\nen2 {ark}:{4 + 2 + 5 * (n + 1) + 4}\n"
    for rspec in (f"ark:{ark}", f"scp:{scp}", f"ark,s,cs:{ark}"):
        assert {k: v.tolist() for k, v in read_int_vectors(rspec)} == expected
    ali_to_pdf(lang0 / "final.mdl", f"ark:{lang0 / 'ali.txt'}", f"ark:{tmp_path / 'b.ark'}")
    assert (tmp_path / "b.ark").read_bytes() == raw


def test_read_int_vectors_all_sources_agree(lang0, tmp_path):
    expected = parse_text_table(lang0 / "ali.txt")
    plain = tmp_path / "ali.ark"
    plain.write_bytes(gzip.decompress((lang0 / "ali.1.gz").read_bytes()))
    for rspec in (gz_rspec(lang0 / "ali.1.gz"), f"ark:{lang0 / 'ali.txt'}", f"ark:{plain}", f"ark:cat {plain} |"):
        got = list(read_int_vectors(rspec))
        assert [k for k, _ in got] == ["en1", "en2"]
        assert all(v.dtype == np.int32 for _, v in got)
        assert {k: v.tolist() for k, v in got} == expected
    rewritten = tmp_path / "rewritten.ark"  # our binary writer reproduces Kaldi's archive byte for byte
    write_int_vectors(f"ark:{rewritten}", read_int_vectors(gz_rspec(lang0 / "ali.1.gz")))
    assert rewritten.read_bytes() == plain.read_bytes()


def test_abandoning_a_pipe_does_not_hang():
    reader = read_int_vectors("ark:yes 'u 1 2 3' |")  # an endless producer
    assert next(reader)[1].tolist() == [1, 2, 3]
    reader.close()  # must stop the command (SIGPIPE) instead of waiting for it forever


def test_binary_round_trip_and_layout(tmp_path):
    rng = np.random.default_rng(0)
    items = [("u1", rng.integers(-2**31, 2**31, 1000, dtype=np.int64)), ("empty", np.zeros(0, np.int32)),
             ("u-3", np.array([7], dtype=np.int16))]
    path = tmp_path / "x.ark"
    write_int_vectors(f"ark:{path}", items)
    back = list(read_int_vectors(f"ark:{path}"))
    assert [k for k, _ in back] == ["u1", "empty", "u-3"]
    for (_, a), (_, b) in zip(items, back):
        assert b.dtype == np.int32 and b.tolist() == a.tolist()
    write_int_vectors(f"ark,b:{path}", [("a", [1, -1])])
    assert path.read_bytes() == b"a \0B\x04\x02\x00\x00\x00\x04\x01\x00\x00\x00\x04\xff\xff\xff\xff"
    write_int_vectors(f"ark:{path}", [("a", [])])
    assert path.read_bytes() == b"a \0B\x04\x00\x00\x00\x00"


def test_text_format_and_empty_vectors(tmp_path):
    path = tmp_path / "x.txt"
    write_int_vectors(f"ark,t:{path}", [("a", np.array([1, 22, -3])), ("b", []), ("c", [5])])
    assert path.read_bytes() == b"a 1 22 -3 \nb \nc 5 \n"
    # kaldiio swallows the line after an empty text vector; we must not
    assert [(k, v.tolist()) for k, v in read_int_vectors(f"ark:{path}")] == [("a", [1, 22, -3]), ("b", []), ("c", [5])]
    write_int_vectors(f"ark,t,scp:{path},{tmp_path / 'x.scp'}", [("a", [1, 2]), ("b", [3])])
    assert (tmp_path / "x.scp").read_text() == f"a {path}:2\nb {path}:9\n"
    assert [(k, v.tolist()) for k, v in read_int_vectors(f"scp:{tmp_path / 'x.scp'}")] == [("a", [1, 2]), ("b", [3])]


def test_alignment_dir(lang0, tmp_path):
    d = AlignmentDir(copy_ali_dir(lang0, tmp_path / "ali"))
    assert d.num_pdfs == 18 and d.num_jobs == 1
    assert d.transition_model.num_transition_ids == 36
    assert d.phones is not None and d.phones[1] == "sil"
    pdfs = list(d.pdf_alignments())
    assert all(v.dtype == np.int32 for _, v in pdfs)
    assert as_text(pdfs) == (lang0 / "pdf_ali.txt").read_bytes()
    assert as_text(read_pdf_alignments(str(tmp_path / "ali"))) == (lang0 / "pdf_ali.txt").read_bytes()
    assert as_text(read_pdf_alignments(f"ark:{lang0 / 'pdf_ali.txt'}")) == (lang0 / "pdf_ali.txt").read_bytes()


def test_alignment_dir_with_two_jobs(lang0, tmp_path):
    ali = copy_ali_dir(lang0, tmp_path / "ali", num_jobs=2)
    with pytest.raises(BabelflowError, match=re.escape(str(ali / "ali.2.gz")) + ".*missing: ali.2.gz"):
        AlignmentDir(ali)
    write_int_vectors(f"ark:| gzip -c > {ali / 'ali.2.gz'}", [("de1", np.array([1, 2, 36]))])
    assert [(k, v.tolist()) for k, v in AlignmentDir(ali).pdf_alignments()][-1] == ("de1", [0, 0, 17])


def test_alignment_dir_validation(lang0, tmp_path):
    ali = copy_ali_dir(lang0, tmp_path / "ali")
    (ali / "num_jobs").unlink()
    with pytest.raises(BabelflowError, match=re.escape(str(ali / "num_jobs"))):
        AlignmentDir(ali)
    (ali / "num_jobs").write_text("two\n")
    with pytest.raises(BabelflowError, match="num_jobs: expected a positive integer"):
        AlignmentDir(ali)
    (ali / "num_jobs").write_text("1\n")
    (ali / "final.mdl").write_bytes(b"\0B<Nnet3> ")
    with pytest.raises(BabelflowError, match=re.escape(str(ali / "final.mdl"))):
        AlignmentDir(ali)
    shutil.copyfile(lang0 / "final.mdl", ali / "final.mdl")
    (ali / "ali.1.gz").write_bytes((lang0 / "ali.1.gz").read_bytes()[:60])
    with pytest.raises(BabelflowError, match=re.escape(str(ali / "ali.1.gz"))):
        list(AlignmentDir(ali).pdf_alignments())
    with pytest.raises(BabelflowError, match="neither an alignment directory"):
        read_pdf_alignments(str(tmp_path / "nowhere"))


@pytest.mark.parametrize("bad_id", [37, 0, -5])
def test_transition_id_out_of_range(lang0, tmp_path, bad_id):
    ali = tmp_path / "ali.ark"
    write_int_vectors(f"ark:{ali}", [("ok-utt", [1, 2]), ("bad-utt", [1, 2, bad_id, 3])])
    out = tmp_path / "pdf.txt"
    with pytest.raises(BabelflowError, match=rf"bad-utt.*transition-id {bad_id} at frame 2"):
        ali_to_pdf(lang0 / "final.mdl", f"ark:{ali}", f"ark,t:{out}")
    assert not out.exists() and list(tmp_path.iterdir()) == [ali]  # atomic: nothing half-written
    d = copy_ali_dir(lang0, tmp_path / "dir")
    write_int_vectors(f"ark:| gzip -c > {d / 'ali.1.gz'}", [("bad-utt", [bad_id])])
    with pytest.raises(BabelflowError, match=re.escape(str(d / "ali.1.gz")) + r".*bad-utt.*transition-id"):
        list(AlignmentDir(d).pdf_alignments())


def test_read_errors_name_source_and_key(lang0, tmp_path):
    missing = tmp_path / "missing.gz"
    with pytest.raises(BabelflowError, match=r"gunzip -c .*missing\.gz.*failed"):  # kaldiio silently yields nothing
        list(read_int_vectors(gz_rspec(missing)))
    trunc = tmp_path / "trunc.ark"
    trunc.write_bytes(gzip.decompress((lang0 / "ali.1.gz").read_bytes())[:-7])
    with pytest.raises(BabelflowError, match=rf"{re.escape(str(trunc))} \(key 'en2'\).*truncated"):
        list(read_int_vectors(f"ark:{trunc}"))
    text = tmp_path / "bad.txt"
    text.write_text("u1 1 2\nu2 3 x\n")
    with pytest.raises(BabelflowError, match=r"\(key 'u2'\).*not a line of integers"):
        list(read_int_vectors(f"ark:{text}"))
    for spec in ("foo:bar", "ark:", str(text)):
        with pytest.raises(BabelflowError, match="rspecifier"):
            list(read_int_vectors(spec))
    for spec in ("scp:x.scp", "ark,scp:only_one", "ark,scp:-,x.scp", "t:x", "ark,foo:x"):
        with pytest.raises(BabelflowError, match="wspecifier"):
            write_int_vectors(spec, [])
    with pytest.raises(BabelflowError, match="invalid key"):
        write_int_vectors(f"ark:{tmp_path / 'k.ark'}", [("has space", [1])])
