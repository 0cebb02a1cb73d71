"""data/overlap.py: the val text checked against the train shards for copied passages (long shared n-grams)."""

import json

import numpy as np
import pytest

from data import overlap
from data.shards import write_shard


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    val = rng.integers(0, 512, 20_000)
    train = [rng.integers(0, 512, 50_000) for _ in range(2)]
    return tmp_path, val, train


def shards(folder, val, train):
    write_shard(folder / "val_000000.bin", val)
    for i, tokens in enumerate(train):
        write_shard(folder / f"train_{i:06d}.bin", tokens)
    return sorted(map(str, folder.glob("train_*.bin"))), [str(folder / "val_000000.bin")]


@pytest.mark.parametrize("copied", [0, 1_000, 5_000])
def test_the_fraction_is_the_share_of_val_text_copied_into_train(folder, copied):
    """A passage of val copied into a train shard (anywhere, at any offset) counts in full; nothing else does."""
    root, val, train = folder
    train[1] = np.concatenate([train[1][:12_345], val[7_000:7_000 + copied], train[1][12_345:]])
    result = overlap.measure(*shards(root, val, train), progress=False)
    assert result["fraction"] == pytest.approx(copied / len(val), abs=2 * overlap.STRIDE / len(val))
    assert (result["shared_ngrams"] == 0) == (copied == 0)


def test_a_copy_shorter_than_an_ngram_is_not_counted(folder):
    root, val, train = folder
    train[0] = np.concatenate([train[0][:100], val[500:500 + overlap.NGRAM - 1], train[0][100:]])
    assert overlap.measure(*shards(root, val, train), progress=False)["fraction"] == 0


def test_the_command_writes_overlap_json_and_recorded_checks_the_shards(folder, capsys):
    root, val, train = folder
    train_paths, val_paths = shards(root, val, train)
    assert overlap.main(["--train", str(root / "train_*.bin"), "--val", str(root / "val_*.bin")]) == 0
    assert "val/train overlap: 0.0000% of 20,000 val tokens" in capsys.readouterr().out
    result = json.loads((root / overlap.FILE).read_text())
    assert overlap.recorded(str(root), result["train_shards"], result["val_shards"]) == result
    write_shard(root / "train_000001.bin", train[1][::-1])  # another shard under the same name: not these shards
    listed = [{"name": p.split("/")[-1], "sha256": overlap.sha256_file(p)} for p in train_paths]
    assert overlap.recorded(str(root), listed, result["val_shards"]) is None


def test_no_shards_is_one_line(tmp_path, capsys):
    assert overlap.main(["--train", str(tmp_path / "train_*.bin"), "--val", str(tmp_path / "val_*.bin")]) == 2
    assert capsys.readouterr().err.startswith("error: no shards match")
