"""The token shard format: llm.c / modded-nanogpt compatible, and every kind of corruption named."""

import numpy as np
import pytest

from data.shards import HEADER_BYTES, MAGIC, ShardError, read_header, read_shard, read_tokenizer_sha256, write_shard


def test_header_round_trip(tmp_path):
    tokens = np.array([0, 1, 50256, 65535, 7], dtype=np.uint16)
    path = tmp_path / "a.bin"
    write_shard(path, tokens)
    assert path.stat().st_size == HEADER_BYTES + 2 * len(tokens)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[:3].tolist() == [MAGIC, 1, len(tokens)] and not header[3:].any()
    assert read_header(path) == len(tokens)
    np.testing.assert_array_equal(read_shard(path), tokens)


def test_layout_matches_llm_c_byte_for_byte(tmp_path):
    """Little-endian int32 header then little-endian uint16 tokens, as llm.c's write_datafile produces."""
    path = tmp_path / "a.bin"
    write_shard(path, np.array([1, 258], dtype=np.int64))
    raw = path.read_bytes()
    assert raw[:12] == (20240520).to_bytes(4, "little") + (1).to_bytes(4, "little") + (2).to_bytes(4, "little")
    assert raw[HEADER_BYTES:] == b"\x01\x00\x02\x01"


def test_empty_shard_round_trips(tmp_path):
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert len(read_shard(tmp_path / "e.bin")) == 0


def test_tokens_out_of_uint16_range_are_refused(tmp_path):
    with pytest.raises(ValueError, match="65536"):
        write_shard(tmp_path / "big.bin", np.array([65536]))
    assert not (tmp_path / "big.bin").exists()


def corrupt(path, kind):
    raw = bytearray(path.read_bytes())
    if kind == "magic":
        raw[0:4] = (12345).to_bytes(4, "little")
    elif kind == "version":
        raw[4:8] = (7).to_bytes(4, "little")
    elif kind == "truncated":
        raw = raw[:-2]
    elif kind == "too long":
        raw += b"\x00\x00"
    elif kind == "short header":
        raw = raw[:100]
    elif kind == "negative count":
        raw[8:12] = (-5).to_bytes(4, "little", signed=True)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("kind, message", [
    ("magic", "magic number 12345"), ("version", "version 7"), ("truncated", "truncated or corrupt"),
    ("too long", "truncated or corrupt"), ("short header", "shorter than the 1024-byte header"),
    ("negative count", "-5 tokens"),
])
def test_corrupt_shard_is_rejected_with_the_file_named(tmp_path, kind, message):
    path = tmp_path / f"shard_{kind.replace(' ', '_')}.bin"
    write_shard(path, np.arange(10, dtype=np.uint16))
    corrupt(path, kind)
    with pytest.raises(ShardError, match=message) as error:
        read_shard(path)
    assert str(path) in str(error.value)


def test_missing_shard_is_named(tmp_path):
    with pytest.raises(ShardError, match="nope.bin"):
        read_shard(tmp_path / "nope.bin")


def test_reader_memory_maps_without_reading_everything(tmp_path):
    path = tmp_path / "m.bin"
    write_shard(path, np.arange(1000, dtype=np.uint16))
    tokens = read_shard(path)
    assert isinstance(tokens, np.memmap) and not tokens.flags.writeable
    assert tokens[999] == 999


# -----------------------------------------------------------------------------
# The tokenizer's identity in the header


def test_the_tokenizer_sha256_round_trips_in_ints_4_to_11_and_the_rest_stays_llm_c(tmp_path):
    sha = "0123456789abcdef" * 4
    tokens = np.array([5, 6, 7], dtype=np.uint16)
    write_shard(tmp_path / "a.bin", tokens, tokenizer_sha256=sha)
    header = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=256)
    assert header[:3].tolist() == [MAGIC, 1, 3] and header[3] == 0 and not header[12:].any()
    assert header[4:12].tobytes().hex() == sha and read_tokenizer_sha256(tmp_path / "a.bin") == sha
    np.testing.assert_array_equal(read_shard(tmp_path / "a.bin"), tokens)
    write_shard(tmp_path / "b.bin", tokens)  # llm.c's shards: zeros, no identity
    assert read_tokenizer_sha256(tmp_path / "b.bin") is None


def test_a_tokenizer_sha256_that_is_not_64_hex_digits_is_refused(tmp_path):
    with pytest.raises(ValueError, match="64 hex digits"):
        write_shard(tmp_path / "a.bin", np.zeros(3, dtype=np.uint16), tokenizer_sha256="abcd")
    assert not (tmp_path / "a.bin").exists()
