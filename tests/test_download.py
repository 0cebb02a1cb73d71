"""data.download against a fake hub (tests/hub_server.py): which files it fetches, what the manifest records, and
how it survives dropped connections, corrupt bytes, server errors, missing files and bad token shards."""

import hashlib
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import download
from data.download import HubDataset, main
from data.shards import HEADER_BYTES, read_shard, write_shard
from tests.conftest import make_documents, write_corpus
from tests.hub_server import COMMIT, FakeHub

TEXT = HubDataset("test/tiny-text", "shard_{:05d}.parquet", 5, "shard_00005.parquet")
TOKENS = HubDataset("test/tiny-gpt2", "tokens_train_{:06d}.bin", 3, "tokens_val_000000.bin", first_train=1,
                    tokens=True)
OTHER = HubDataset("test/other-text", "shard_{:05d}.parquet", 5, "shard_00005.parquet")  # TEXT's names
DATASETS = {"tiny-text": TEXT, "tiny-tokens": TOKENS, "other-text": OTHER}
CHUNK = 1024  # huggingface_hub's read size (10 MiB by default): small, so a cut in a few-KB file loses little


def parquet_bytes(documents):
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": documents}), sink)
    return sink.getvalue().to_pybytes()


def shard_tokens(i):
    return np.arange(2000 + i) * 7919 % 50257


@pytest.fixture(scope="session")
def hub_files(tmp_path_factory):
    """{repo_id: {filename: bytes}}: parquet text shards of a few KB, and GPT-2 token shards."""
    folder = tmp_path_factory.mktemp("hub")
    tokens = {}
    for i, name in enumerate(TOKENS.files(None)):
        write_shard(folder / name, shard_tokens(i))
        tokens[name] = (folder / name).read_bytes()
    return {TEXT.repo_id: {name: parquet_bytes(make_documents(40, seed=100 + i))
                           for i, name in enumerate(TEXT.files(None))},
            OTHER.repo_id: {name: parquet_bytes(make_documents(40, seed=200 + i))
                            for i, name in enumerate(OTHER.files(None))},
            TOKENS.repo_id: tokens}


@pytest.fixture
def hub(hub_files):
    with FakeHub({repo: dict(files) for repo, files in hub_files.items()}) as hub:  # a copy each test may edit
        yield hub


class Clock:
    """A stand-in for a module's `time`: sleep() records the wait instead of waiting."""

    def __init__(self, waits):
        self.waits = waits

    def sleep(self, seconds):
        self.waits.append(seconds)

    def __getattr__(self, name):
        return getattr(time, name)


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Nothing touches the real hub's cache, token or settings (huggingface_hub reads them at import, so its
    constants are patched too); DATASETS is the fake one."""
    from huggingface_hub import constants
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    for var in ("HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    for name, value in {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_TOKEN_PATH": str(home / "token"),
                        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"), "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
                        "HF_HUB_DISABLE_XET": True, "HF_HUB_OFFLINE": False, "DOWNLOAD_CHUNK_SIZE": CHUNK}.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(download, "DATASETS", DATASETS)
    yield
    assert not home.exists() or not any((home / "hub").glob("*")), "the hub cache was used"


@pytest.fixture(autouse=True)
def waits(monkeypatch):
    """Waits between tries, recorded rather than slept: data.download's backoff, and huggingface_hub's own
    (1 s before it resumes a dropped transfer, 1-8 s between retried HEADs)."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http
    recorded = {"download": [], "hub": []}
    monkeypatch.setattr(download, "time", Clock(recorded["download"]))
    monkeypatch.setattr(file_download, "time", Clock(recorded["hub"]))
    monkeypatch.setattr(_http, "time", Clock(recorded["hub"]))
    return recorded


def fetch(hub, out, *args, dataset="tiny-text"):
    main(["--dataset", dataset, "--endpoint", hub.url, "--out", str(out), "--backoff", "0.01", *args])


def fails(hub, out, *args, dataset="tiny-text", one_line=True):
    """The error main exits with (one line, unless told)."""
    with pytest.raises(SystemExit) as exc:
        fetch(hub, out, *args, dataset=dataset)
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error: ")
    assert "\n" not in message or not one_line, message
    return message


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def sha256(data):
    return hashlib.sha256(data).hexdigest()


FIRST_TWO = ["shard_00000.parquet", "shard_00001.parquet", "shard_00005.parquet"]


# -----------------------------------------------------------------------------
# What is fetched and recorded

def test_fetches_the_first_num_shards_train_files_and_the_val_file(hub, tmp_path):
    out = tmp_path / "out"
    fetch(hub, out, "--num-shards", "2")
    assert sorted(p.name for p in out.glob("*.parquet")) == FIRST_TWO
    assert sorted(r.filename for r in hub.gets()) == FIRST_TWO  # each once, nothing else
    recorded = manifest(out)
    assert recorded["origin"] == {"dataset": "tiny-text", "repo_id": TEXT.repo_id, "revision": "main"}
    assert sorted(recorded["files"]) == FIRST_TWO
    for name in FIRST_TWO:
        data = hub.repos[TEXT.repo_id][name]
        assert (out / name).read_bytes() == data
        entry = recorded["files"][name]
        assert (entry["bytes"], entry["sha256"], entry["commit"]) == (len(data), sha256(data), COMMIT)
        assert entry["source"] == f"{hub.url}/datasets/{TEXT.repo_id}/resolve/main/{name}"
    assert not list(out.rglob("*.incomplete"))


@pytest.mark.parametrize("num_shards", ["-1", "99"])
def test_all_train_files_with_num_shards_minus_one_or_more_than_there_are(hub, tmp_path, num_shards):
    fetch(hub, tmp_path / "out", "--num-shards", num_shards)
    assert sorted(r.filename for r in hub.gets()) == TEXT.files(None)
    assert sorted(manifest(tmp_path / "out")["files"]) == TEXT.files(None)


def test_a_rerun_verifies_every_file_and_contacts_no_one(hub, tmp_path, capsys):
    out = tmp_path / "out"
    fetch(hub, out, "--num-shards", "2")
    before = manifest(out)
    hub.requests.clear()
    capsys.readouterr()
    fetch(hub, out, "--num-shards", "2")
    assert hub.requests == []
    assert manifest(out) == before
    assert "0 fetched, 3 already there and verified" in capsys.readouterr().out


def test_more_shards_later_fetches_only_the_new_ones(hub, tmp_path):
    out = tmp_path / "out"
    fetch(hub, out, "--num-shards", "2")
    hub.requests.clear()
    fetch(hub, out, "--num-shards", "3")
    assert [r.filename for r in hub.gets()] == ["shard_00002.parquet"]
    assert sorted(manifest(out)["files"]) == sorted(FIRST_TWO + ["shard_00002.parquet"])


# -----------------------------------------------------------------------------
# Interrupted and corrupt transfers

def test_a_dropped_connection_resumes_with_a_range_request(hub, tmp_path, waits):
    out, name = tmp_path / "out", "shard_00001.parquet"
    data = hub.repos[TEXT.repo_id][name]
    at = 2 * CHUNK
    assert len(data) > at + CHUNK
    seen = []  # (method, Range, whether the file is under its final name) at each request for it

    def look(request):
        if request.filename == name:
            seen.append((request.method, request.range, (out / name).exists()))
    hub.on_request = look
    hub.cut(name, at=at)
    fetch(hub, out, "--num-shards", "2")
    assert [r.range for r in hub.gets(name)] == [None, f"bytes={at}-"]  # the rest, not the whole file again
    assert (out / name).read_bytes() == data
    assert manifest(out)["files"][name]["sha256"] == sha256(data)
    assert ("GET", f"bytes={at}-", False) in seen and not any(visible for *_, visible in seen)
    assert not list(out.rglob("*.incomplete"))
    assert waits["download"] == []  # resumed within the transfer, not by fetching the file again


def test_a_transfer_that_keeps_dropping_fails_without_leaving_a_partial_file(hub, tmp_path):
    out, name = tmp_path / "out", "shard_00001.parquet"
    hub.cut(name, at=0, times=1000)  # no byte ever arrives: huggingface_hub gives up, then so does the retry loop
    message = fails(hub, out, "--num-shards", "2", "--retries", "1")
    assert name in message and "failed after 2 tries" in message
    assert not (out / name).exists() and not list(out.rglob("*.incomplete"))
    assert sorted(manifest(out)["files"]) == ["shard_00000.parquet", "shard_00005.parquet"]  # the others kept


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[:-10])


@pytest.mark.parametrize("damage", [flip_a_byte, truncate, os.remove])
def test_a_file_damaged_on_disk_is_fetched_again_and_only_it(hub, tmp_path, damage):
    out, name = tmp_path / "out", "shard_00001.parquet"
    fetch(hub, out, "--num-shards", "2")
    before = manifest(out)
    hub.requests.clear()
    damage(out / name)
    fetch(hub, out, "--num-shards", "2")
    assert {r.filename for r in hub.requests} == {name} and len(hub.gets(name)) == 1
    assert (out / name).read_bytes() == hub.repos[TEXT.repo_id][name]
    assert manifest(out) == before


def test_corrupt_bytes_from_the_hub_are_rejected_and_fetched_again(hub, tmp_path, capsys, waits):
    out, name = tmp_path / "out", "shard_00001.parquet"
    hub.corrupt(name)
    fetch(hub, out, "--num-shards", "2")
    assert len(hub.gets(name)) == 2 and len(waits["download"]) == 1
    assert (out / name).read_bytes() == hub.repos[TEXT.repo_id][name]
    assert manifest(out)["files"][name]["sha256"] == sha256(hub.repos[TEXT.repo_id][name])
    assert f"{name}: downloaded" in capsys.readouterr().out  # the rejection is reported


def test_a_hub_that_keeps_sending_corrupt_bytes_fails_and_leaves_no_file(hub, tmp_path):
    out, name = tmp_path / "out", "shard_00001.parquet"
    hub.corrupt(name, times=1000)
    message = fails(hub, out, "--num-shards", "2", "--retries", "2")
    assert name in message and "failed after 3 tries" in message and "ETag" in message
    assert len(hub.gets(name)) == 3
    assert not (out / name).exists() and name not in manifest(out)["files"]


# -----------------------------------------------------------------------------
# Server errors and missing files

def test_server_errors_are_retried_with_exponential_backoff(hub, tmp_path, waits):
    out, name = tmp_path / "out", "shard_00001.parquet"
    hub.fail(name, times=3)
    fetch(hub, out, "--num-shards", "2", "--retries", "5", "--backoff", "0.01")
    assert (out / name).read_bytes() == hub.repos[TEXT.repo_id][name]
    assert len(waits["download"]) == 3
    for attempt, wait in enumerate(waits["download"]):  # backoff * 2^attempt, with up to 100% jitter
        assert 0.01 * 2 ** attempt <= wait < 0.02 * 2 ** attempt


def test_persistent_server_errors_give_up_after_the_retries(hub, tmp_path):
    out, name = tmp_path / "out", "shard_00001.parquet"
    hub.fail(name, times=1000)
    message = fails(hub, out, "--num-shards", "2", "--retries", "2", one_line=False)
    assert name in message and "failed after 3 tries" in message and "500" in message
    assert len([r for r in hub.requests if r.filename == name]) == 3
    assert not (out / name).exists()


def test_the_error_after_persistent_server_errors_is_one_line(hub, tmp_path):
    hub.fail("shard_00001.parquet", times=1000)
    fails(hub, tmp_path / "out", "--num-shards", "2", "--retries", "0")


def test_a_file_missing_from_the_hub_fails_at_once_naming_it(hub, tmp_path, waits):
    out, name = tmp_path / "out", "shard_00001.parquet"
    del hub.repos[TEXT.repo_id][name]
    message = fails(hub, out, "--num-shards", "2")
    assert name in message and "not on the hub" in message and "EntryNotFound" in message
    assert [r.method for r in hub.requests if r.filename == name] == ["HEAD"]  # asked once, not retried
    assert waits["download"] == []
    assert sorted(manifest(out)["files"]) == ["shard_00000.parquet", "shard_00005.parquet"]  # the others kept


def test_a_missing_repo_or_revision_fails_at_once(hub, tmp_path, monkeypatch, waits):
    monkeypatch.setitem(DATASETS, "tiny-text", HubDataset("test/no-such-repo", TEXT.train_name, 5, TEXT.val_name))
    assert "RepositoryNotFoundError" in fails(hub, tmp_path / "a", "--num-shards", "2")
    assert len(hub.requests) == 3  # one HEAD per file
    monkeypatch.setitem(DATASETS, "tiny-text", TEXT)
    assert "RevisionNotFoundError" in fails(hub, tmp_path / "b", "--num-shards", "2", "--revision", "v9")
    assert len(hub.requests) == 6 and waits["download"] == []


def test_a_server_error_after_the_metadata_check_is_retried_not_reported_missing(hub, tmp_path):
    out, name = tmp_path / "out", "shard_00001.parquet"
    # data.download's HEAD succeeds; hf_hub_download's HEAD and its own 6 retries of it get a 500
    hub.fail(name, times=7, after=1)
    fetch(hub, out, "--num-shards", "2", "--retries", "3")
    assert (out / name).read_bytes() == hub.repos[TEXT.repo_id][name]


# -----------------------------------------------------------------------------
# Token shards

def test_token_shards_are_fetched_and_readable(hub, tmp_path):
    out = tmp_path / "out"
    fetch(hub, out, "--num-shards", "2", dataset="tiny-tokens")
    names = ["tokens_train_000001.bin", "tokens_train_000002.bin", "tokens_val_000000.bin"]
    assert sorted(manifest(out)["files"]) == names
    for i, name in enumerate(TOKENS.files(None)):
        if name in names:
            np.testing.assert_array_equal(read_shard(out / name), shard_tokens(i))
    # the val text is checked against the train shards: here every shard starts the same progression of ids
    measured = json.loads((out / "overlap.json").read_text())
    assert [s["name"] for s in measured["train_shards"] + measured["val_shards"]] == names
    assert measured["fraction"] == pytest.approx(2000 / 2003, abs=0.01)


def header_says_one_more_token(data):
    return data[:8] + (int.from_bytes(data[8:12], "little") + 1).to_bytes(4, "little") + data[12:]


def not_a_shard(data):
    return b"\0" * len(data)


@pytest.mark.parametrize("spoil, complaint", [(header_says_one_more_token, "tokens"), (not_a_shard, "magic number")])
def test_a_token_shard_with_a_bad_header_is_rejected_naming_it(hub, tmp_path, spoil, complaint):
    out, name = tmp_path / "out", TOKENS.val_name
    files = hub.repos[TOKENS.repo_id]
    files[name] = spoil(files[name])  # what the hub really has (its ETag matches): a bad shard, not a bad transfer
    assert len(files[name]) > HEADER_BYTES
    message = fails(hub, out, "--num-shards", "1", "--retries", "1", dataset="tiny-tokens")
    assert name in message and complaint in message and "the hub's own copy is bad" in message
    assert len(hub.gets(name)) == 1  # no retry can mend the hub's own file
    assert not (out / name).exists() and name not in manifest(out)["files"]
    assert "tokens_train_000001.bin" in manifest(out)["files"]


# -----------------------------------------------------------------------------
# A local folder instead of the hub

def test_source_copies_a_local_folder_with_a_manifest(tmp_path):
    source, out = write_corpus(tmp_path / "src", files=4), tmp_path / "out"
    (source / ".hidden.parquet").write_bytes(b"x")
    (source / "README.md").write_text("not data")
    main(["--source", str(source), "--out", str(out)])
    names = [f"shard_{i:05d}.parquet" for i in range(4)]
    assert sorted(os.listdir(out)) == ["manifest.json"] + names
    for name in names:
        data = (source / name).read_bytes()
        assert (out / name).read_bytes() == data
        entry = manifest(out)["files"][name]
        assert (entry["bytes"], entry["sha256"], entry["source"]) == (len(data), sha256(data), str(source))


def test_a_second_source_run_verifies_without_copying(tmp_path, monkeypatch, capsys):
    source, out = write_corpus(tmp_path / "src", files=3), tmp_path / "out"
    main(["--source", str(source), "--out", str(out)])
    copies = []
    copy_local = download.copy_local
    monkeypatch.setattr(download, "copy_local", lambda *args: copies.append(args[1]) or copy_local(*args))
    (out / "shard_00001.parquet").write_bytes(b"damaged")
    capsys.readouterr()
    main(["--source", str(source), "--out", str(out)])
    assert copies == ["shard_00001.parquet"]  # the damaged one only
    assert (out / "shard_00001.parquet").read_bytes() == (source / "shard_00001.parquet").read_bytes()
    assert "1 fetched, 2 already there and verified" in capsys.readouterr().out


def test_source_num_shards_limits_the_train_files(tmp_path):
    source, out = write_corpus(tmp_path / "src", files=4), tmp_path / "out"
    main(["--source", str(source), "--out", str(out), "--num-shards", "1"])
    assert sorted(manifest(out)["files"]) == ["shard_00000.parquet", "shard_00003.parquet"]


def test_a_non_utf8_txt_in_the_source_fails_naming_it_then_once_removed_leaves_no_trace(tmp_path):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for name in ("a.txt", "c.txt"):
        (source / name).write_text(f"the text of {name}\n")
    (source / "b.txt").write_bytes("caf\u00e9 in latin-1\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exc:
        main(["--source", str(source), "--out", str(out)])
    assert exc.value.code.startswith(f"error: 1 of 3 files failed (first: {source / 'b.txt'}: not UTF-8 text (byte 3 "
                                     "is b'\\xe9'); convert it to UTF-8")
    assert "\n" not in exc.value.code
    assert sorted(os.listdir(out)) == ["a.txt", "c.txt", "manifest.json"]  # no copy of it, not even a partial one
    (source / "b.txt").unlink()
    main(["--source", str(source), "--out", str(out)])
    assert sorted(os.listdir(out)) == ["a.txt", "c.txt", "manifest.json"] and sorted(manifest(out)["files"]) == \
        ["a.txt", "c.txt"]


def test_a_file_taken_out_of_the_source_is_taken_out_of_its_copy(tmp_path, capsys):
    """The corpus is every file of the copy's folder: a file removed from the source (a bad one copied before
    copies were checked, say) must not live on there."""
    source, out = write_corpus(tmp_path / "src", files=4), tmp_path / "out"
    main(["--source", str(source), "--out", str(out)])
    (source / "shard_00001.parquet").unlink()
    main(["--source", str(source), "--out", str(out)])
    names = ["shard_00000.parquet", "shard_00002.parquet", "shard_00003.parquet"]
    assert sorted(os.listdir(out)) == ["manifest.json"] + names and sorted(manifest(out)["files"]) == names
    assert f"shard_00001.parquet: no longer in {source}; its copy in {out} is removed" in capsys.readouterr().out


def test_a_file_corrected_in_the_source_is_copied_again(tmp_path, capsys):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for name in ("a.txt", "b.txt"):
        (source / name).write_text(f"first version of {name}\n")
    main(["--source", str(source), "--out", str(out)])
    (source / "a.txt").write_text("the corrected a\n")
    mtime = (source / "b.txt").stat().st_mtime_ns + 10**9  # touched, not changed: copied again all the same
    os.utime(source / "b.txt", ns=(mtime, mtime))          # (size and modification time are the test)
    capsys.readouterr()
    main(["--source", str(source), "--out", str(out)])
    printed = capsys.readouterr().out
    assert f"a.txt: changed in {source} since it was copied; copying it again" in printed
    assert (out / "a.txt").read_text() == "the corrected a\n" and "2 fetched, 0 already there" in printed
    main(["--source", str(source), "--out", str(out)])
    assert "0 fetched, 2 already there and verified" in capsys.readouterr().out


def test_copies_recorded_before_source_stats_are_kept_when_their_source_is_unchanged(tmp_path, capsys):
    source, out = write_corpus(tmp_path / "src", files=3), tmp_path / "out"
    main(["--source", str(source), "--out", str(out)])
    old = manifest(out)
    for entry in old["files"].values():  # as the previous download.py wrote it
        del entry["source_stat"]
    (out / "manifest.json").write_text(json.dumps(old))
    (source / "shard_00001.parquet").write_bytes((source / "shard_00000.parquet").read_bytes())  # this one changed
    capsys.readouterr()
    main(["--source", str(source), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "1 fetched, 2 already there and verified" in printed and "shard_00001.parquet: changed in" in printed
    assert all("source_stat" in entry for entry in manifest(out)["files"].values())


def test_a_source_file_that_changes_while_it_is_copied_is_not_recorded(tmp_path, monkeypatch):
    source, out = tmp_path / "src", tmp_path / "out"
    source.mkdir()
    for name in ("a.txt", "b.txt"):
        (source / name).write_text(f"the text of {name}\n")
    real_copy = download.shutil.copyfile

    def copy_then_the_source_changes(src, dst):
        real_copy(src, dst)
        if src.endswith("a.txt"):
            with open(src, "a") as f:
                f.write("more, written during the copy\n")
    monkeypatch.setattr(download.shutil, "copyfile", copy_then_the_source_changes)
    with pytest.raises(SystemExit) as exc:
        main(["--source", str(source), "--out", str(out), "--workers", "1"])
    assert f"{source / 'a.txt'}: changed while it was being copied; run again once it is written" in exc.value.code
    assert sorted(manifest(out)["files"]) == ["b.txt"] and not (out / "a.txt").exists()
    monkeypatch.undo()
    main(["--source", str(source), "--out", str(out)])
    assert (out / "a.txt").read_text() == (source / "a.txt").read_text()


def test_a_copy_that_the_manifest_does_not_record_is_said_to_be_so(tmp_path, capsys):
    source, out = write_corpus(tmp_path / "src", files=2), tmp_path / "out"
    out.mkdir()
    (out / "shard_00000.parquet").write_bytes((source / "shard_00000.parquet").read_bytes())
    main(["--source", str(source), "--out", str(out)])
    assert "shard_00000.parquet: not recorded in manifest.json; fetching it again" in capsys.readouterr().out


@pytest.mark.parametrize("files, complaint", [(None, "no such folder"), (0, "at least 2"), (1, "at least 2")])
def test_a_source_folder_without_two_files_errors_clearly(tmp_path, files, complaint):
    source, out = tmp_path / "src", tmp_path / "out"
    if files is not None:
        write_corpus(source, files=files)
    with pytest.raises(SystemExit) as exc:
        main(["--source", str(source), "--out", str(out)])
    assert str(source) in exc.value.code and complaint in exc.value.code
    assert not out.exists()


# -----------------------------------------------------------------------------
# Flags

@pytest.mark.parametrize("flags", [["--num-shards", "0"], ["--num-shards", "-2"], ["--workers", "0"],
                                   ["--retries", "-1"], ["--dataset", "no-such-dataset"]])
def test_bad_flags_stop_before_any_network(hub, tmp_path, flags, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--endpoint", hub.url, "--out", str(tmp_path / "out"), *flags])
    assert exc.value.code == 2 and flags[0] in capsys.readouterr().err
    assert hub.requests == [] and not (tmp_path / "out").exists()


def test_a_folder_holding_another_dataset_or_revision_is_refused_and_kept(hub, tmp_path):
    out = tmp_path / "out"
    fetch(hub, out, "--num-shards", "2", dataset="tiny-text")
    before = {name: (out / name).read_bytes() for name in FIRST_TWO}
    hub.requests.clear()
    assert "choose another --out" in fails(hub, out, "--num-shards", "2", dataset="other-text")
    assert "choose another --out" in fails(hub, out, "--num-shards", "2", "--revision", "v2")
    assert hub.requests == []
    assert {name: (out / name).read_bytes() for name in FIRST_TWO} == before
    assert manifest(out)["origin"]["repo_id"] == TEXT.repo_id


def test_a_parquet_file_that_the_hub_holds_damaged_is_rejected_naming_it(hub, tmp_path):
    out, name = tmp_path / "out", "shard_00001.parquet"
    hub.repos[TEXT.repo_id][name] = b"PAR1 but not really parquet"
    message = fails(hub, out, "--num-shards", "2")
    assert name in message and "not a readable parquet file" in message and "the hub's own copy is bad" in message
    assert len(hub.gets(name)) == 1 and not (out / name).exists()
