"""Tokenization: BOS before every document, exact shard sizes, determinism, resumption after a crash."""

import json
import os

import numpy as np
import pytest

import data.tokenize as tokenize_module
from data.corpus import corpus_files, iter_documents
from data.shards import read_shard, read_tokenizer_sha256
from data.tokenize import main, tokenize_corpus
from data.tokenizer import load_tokenizer, sha256_file
from tests.conftest import write_corpus

SHARD = 3000  # small shards, so that boundaries fall inside documents


def shard_bytes(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder)) if name.endswith(".bin")}


def split_documents(tokens, bos_id):
    """The documents of a token stream, cut at BOS (each document's tokens without its BOS)."""
    starts = np.flatnonzero(tokens == bos_id)
    assert starts[0] == 0, "the stream must begin with BOS"
    return np.split(tokens, starts[1:])


@pytest.fixture(scope="module")
def shards(corpus, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(out), shard_tokens=SHARD, workers=1)
    return out


def test_every_document_comes_back_in_order_after_a_bos(corpus, tokenizer_dir, shards):
    tok = load_tokenizer(tokenizer_dir)
    train_files, val_file = corpus_files(str(corpus))
    for prefix, files in (("train", train_files), ("val", [val_file])):
        stream = np.concatenate([read_shard(shards / n) for n in sorted(os.listdir(shards)) if n.startswith(prefix)])
        documents = split_documents(stream, tok.bos_id)
        assert [tok.decode(d[1:]) for d in documents] == list(iter_documents(files))


def test_shards_hold_exactly_shard_tokens_but_the_last(shards):
    manifest = json.loads((shards / "tokenize.json").read_text())
    for split in ("train", "val"):
        sizes = [len(read_shard(shards / s["name"])) for s in manifest["splits"][split]["shards"]]
        assert sizes == [s["tokens"] for s in manifest["splits"][split]["shards"]]
        assert len(sizes) >= 2 and set(sizes[:-1]) == {SHARD} and 0 < sizes[-1] <= SHARD
        assert manifest["splits"][split]["done"]


def test_output_is_byte_identical_with_any_worker_count(corpus, tokenizer_dir, shards, tmp_path):
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=2)
    assert shard_bytes(tmp_path) == shard_bytes(shards)


def test_resume_after_a_crash_matches_an_uninterrupted_run(corpus, tokenizer_dir, shards, tmp_path, monkeypatch):
    real_write = tokenize_module.write_shard
    written = []

    def crash_on_the_fifth_shard(path, tokens, **kwargs):
        if len(written) == 4:
            raise KeyboardInterrupt("simulated crash")
        written.append(path)
        real_write(path, tokens, **kwargs)

    monkeypatch.setattr(tokenize_module, "write_shard", crash_on_the_fifth_shard)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    assert len(shard_bytes(tmp_path)) == 4
    file_index, row, offset = json.loads((tmp_path / "tokenize.json").read_text())["splits"]["train"]["next"]
    assert offset > 0, "the crash should fall inside a document, so that resuming must skip part of it"
    monkeypatch.setattr(tokenize_module, "write_shard", real_write)
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    assert shard_bytes(tmp_path) == shard_bytes(shards)


def test_crashes_after_every_shard_inside_one_long_document_still_match_an_uninterrupted_run(tokenizer_dir, tmp_path,
                                                                                             monkeypatch):
    """A document longer than several shards; four runs each write one shard and are killed: every resume starts
    inside that document, 100 tokens further each time, and the shards come out as without the crashes."""
    corpus = tmp_path / "texts"
    corpus.mkdir()
    texts = ["a short first document", " ".join(f"word{i} and more" for i in range(400)), "the val document"]
    for i, text in enumerate(texts):
        (corpus / f"{i}.txt").write_text(text, encoding="utf-8")
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path / "whole"), shard_tokens=100, workers=1)
    real_write, written = tokenize_module.write_shard, []

    def one_shard_then_crash(path, tokens, **kwargs):
        if written:
            raise KeyboardInterrupt("simulated crash")
        written.append(path)
        real_write(path, tokens, **kwargs)

    monkeypatch.setattr(tokenize_module, "write_shard", one_shard_then_crash)
    out, resume_points = tmp_path / "crashed", []
    for _ in range(4):
        written.clear()
        with pytest.raises(KeyboardInterrupt):
            tokenize_corpus(str(corpus), str(tokenizer_dir), str(out), shard_tokens=100, workers=1)
        resume_points.append(json.loads((out / "tokenize.json").read_text())["splits"]["train"]["next"])
    first = resume_points[0][2]
    assert resume_points == [[1, 0, first + 100 * k] for k in range(4)]  # 100 tokens further into file 1's document
    monkeypatch.setattr(tokenize_module, "write_shard", real_write)
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(out), shard_tokens=100, workers=1)
    assert shard_bytes(out) == shard_bytes(tmp_path / "whole")


def test_a_missing_or_damaged_shard_is_rebuilt_on_rerun(corpus, tokenizer_dir, shards, tmp_path):
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    names = sorted(shard_bytes(tmp_path))
    os.remove(tmp_path / names[2])
    with open(tmp_path / names[4], "r+b") as f:
        f.truncate(2000)
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    assert shard_bytes(tmp_path) == shard_bytes(shards)


def test_a_corrupted_shard_body_is_found_by_its_sha256_and_remade_on_rerun(corpus, tokenizer_dir, shards, tmp_path,
                                                                         capsys):
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    name = sorted(shard_bytes(tmp_path))[3]
    with open(tmp_path / name, "r+b") as f:  # one flipped bit in the body: header and size still right
        f.seek(2000)
        byte = f.read(1)[0]
        f.seek(2000)
        f.write(bytes([byte ^ 1]))
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    assert f"{name}: corrupt (its sha256 differs from the one tokenize.json recorded); tokenizing again" in \
        capsys.readouterr().out
    assert shard_bytes(tmp_path) == shard_bytes(shards)


def test_every_shard_names_its_tokenizer_in_its_header_and_the_manifest(tokenizer_dir, shards):
    sha = sha256_file(tokenizer_dir / "tokenizer.json")
    assert json.loads((shards / "tokenize.json").read_text())["config"]["tokenizer_sha256"] == sha
    assert {read_tokenizer_sha256(shards / name) for name in shard_bytes(shards)} == {sha}


def test_rerun_of_a_finished_run_writes_nothing(corpus, tokenizer_dir, shards, capsys):
    mtimes = {n: os.path.getmtime(shards / n) for n in os.listdir(shards)}
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(shards), shard_tokens=SHARD, workers=1)
    assert {n: os.path.getmtime(shards / n) for n in os.listdir(shards)} == mtimes
    assert "already complete" in capsys.readouterr().out


def test_other_inputs_are_refused_without_force_and_nothing_is_deleted(tokenizer_dir, shards, tmp_path):
    other = write_corpus(tmp_path / "other", files=3, docs_per_file=20, seed=9)
    before = shard_bytes(shards)
    with pytest.raises(SystemExit, match="--force"):
        main(["--corpus", str(other), "--tokenizer", str(tokenizer_dir), "--out", str(shards),
              "--shard-tokens", str(SHARD), "--workers", "1"])
    assert shard_bytes(shards) == before


def test_shards_that_no_manifest_describes_are_refused_without_force_and_kept(corpus, tokenizer_dir, tmp_path):
    (tmp_path / "train_000000.bin").write_bytes(b"someone else's shard")
    with pytest.raises(SystemExit) as exc:
        main(["--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path), "--workers", "1"])
    assert exc.value.code == (f"error: {tmp_path} holds shards that no tokenize.json describes (train_000000.bin, "
                              "...); choose another --out, or pass --force to replace them")
    assert sorted(os.listdir(tmp_path)) == ["train_000000.bin"]


def test_a_run_killed_in_its_first_shard_resumes(corpus, tokenizer_dir, shards, tmp_path, monkeypatch):
    def killed_while_writing(path, tokens, **kwargs):
        open(path, "wb").write(b"half a shard")
        raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(tokenize_module, "write_shard", killed_while_writing)
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    monkeypatch.undo()
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), shard_tokens=SHARD, workers=1)
    assert shard_bytes(tmp_path) == shard_bytes(shards)


def test_force_replaces_every_old_shard(tokenizer_dir, tmp_path):
    first = write_corpus(tmp_path / "first", files=3, docs_per_file=100, seed=1)
    second = write_corpus(tmp_path / "second", files=2, docs_per_file=10, seed=2)
    out = tmp_path / "out"
    tokenize_corpus(str(first), str(tokenizer_dir), str(out), shard_tokens=SHARD, workers=1)
    tokenize_corpus(str(second), str(tokenizer_dir), str(out), shard_tokens=SHARD, workers=1, force=True)
    manifest = json.loads((out / "tokenize.json").read_text())
    listed = {s["name"] for split in manifest["splits"].values() for s in split["shards"]}
    assert set(shard_bytes(out)) == listed


def test_max_train_files_tokenizes_the_first_train_files_and_the_val_file(corpus, tokenizer_dir, tmp_path):
    manifest = tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path), workers=1, max_train_files=2)
    train_files, val_file = corpus_files(str(corpus))
    assert [i["name"] for i in manifest["config"]["inputs"]["train"]] == [os.path.basename(f) for f in train_files[:2]]
    assert [i["name"] for i in manifest["config"]["inputs"]["val"]] == [os.path.basename(val_file)]


def test_text_files_are_documents_too(tokenizer_dir, tmp_path):
    corpus = tmp_path / "texts"
    corpus.mkdir()
    for i, text in enumerate(["first document\n", "second, ü", "the val document"]):
        (corpus / f"{i}.txt").write_text(text, encoding="utf-8")
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(tmp_path / "out"), workers=1)
    tok = load_tokenizer(tokenizer_dir)
    train = read_shard(tmp_path / "out" / "train_000000.bin")
    assert [tok.decode(d[1:]) for d in split_documents(train, tok.bos_id)] == ["first document\n", "second, ü"]


def corpus_with_a_null_text(folder, statistics):
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder.mkdir()
    meta = pa.array([{"url": "u", "lang": None}] * 2,  # before the text, with nulls of its own: not a null text
                    type=pa.struct([("url", pa.string()), ("lang", pa.string())]))
    pq.write_table(pa.table({"meta": meta, "text": ["a document", "another"]}), folder / "a.parquet")
    pq.write_table(pa.table({"text": ["hello world", None, "more"]}), folder / "b.parquet", write_statistics=statistics)
    pq.write_table(pa.table({"text": ["the val document"]}), folder / "c.parquet")


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "no such corpus folder"),
    (lambda p: (p.mkdir(), (p / "only.parquet").write_bytes(b"x")), "at least 2 files"),
    (lambda p: (p.mkdir(), (p / "a.parquet").write_bytes(b"junk"), (p / "b.parquet").write_bytes(b"junk")),
     "not a readable parquet file"),
    (lambda p: corpus_with_a_null_text(p, statistics=True), "b.parquet: row group 0 has a null text"),
])
def test_bad_corpus_fails_with_a_clear_message_before_any_work(tokenizer_dir, tmp_path, setup, message):
    corpus = tmp_path / "corpus"
    setup(corpus)
    with pytest.raises(SystemExit, match=message):
        main(["--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_null_text_that_no_statistics_announce_is_named_by_its_row(tokenizer_dir, tmp_path):
    corpus_with_a_null_text(tmp_path / "corpus", statistics=False)
    with pytest.raises(SystemExit) as exc:
        main(["--corpus", str(tmp_path / "corpus"), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out"),
              "--workers", "1"])
    assert exc.value.code.startswith(f"error: {tmp_path / 'corpus' / 'b.parquet'}: row 1 has a null text")


def test_missing_tokenizer_fails_before_any_work(corpus, tmp_path):
    with pytest.raises(SystemExit, match="train a tokenizer first"):
        main(["--corpus", str(corpus), "--tokenizer", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_a_parquet_file_without_a_text_column_is_named(tokenizer_dir, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    corpus = write_corpus(tmp_path / "corpus", files=2, docs_per_file=5)
    pq.write_table(pa.table({"content": ["x"]}), corpus / "shard_00000.parquet")
    with pytest.raises(SystemExit, match="shard_00000.parquet: parquet file has no 'text' column"):
        main(["--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "out")])
