"""Token shard format: the one llm.c and modded-nanogpt use, so their published shards load unchanged.

    header: 256 little-endian int32 = 1024 bytes
        [0] magic   20240520
        [1] version 1 (tokens are uint16)
        [2] number of tokens in the file
        [3] zero
        [4:12] the sha256 of the tokenizer.json that made the tokens (32 bytes), or zero: not recorded
        [12:] zero
    body:   that many little-endian uint16 tokens

Readers of the llm.c format look only at [0:3], so the tokenizer's identity in [4:12] costs no compatibility;
llm.c's and modded-nanogpt's published shards have zeros there. `read_shard` memory-maps a file after checking
its header against its size; `write_shard` writes one atomically (a temporary file renamed into place), so a
crash never leaves a half-written shard behind.
"""

import os

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB = 1 << 16  # uint16 tokens
TOKENIZER_INTS = slice(4, 12)  # header ints holding the tokenizer's sha256


class ShardError(ValueError):
    """A shard file that is not a valid token shard; the message names the file and what is wrong."""


def read_header(path):
    """Checks a shard's header against the file's size and returns its token count."""
    path = os.fspath(path)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise ShardError(f"{path}: cannot read token shard ({e.strerror})") from None
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: {size} bytes is shorter than the {HEADER_BYTES}-byte header; the file is "
                         "truncated or not a token shard: delete it and download or tokenize it again")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, num_tokens = (int(x) for x in header[:3])
    if magic != MAGIC:
        raise ShardError(f"{path}: magic number {magic} is not {MAGIC}; this is not a token shard "
                         "(llm.c / modded-nanogpt format)")
    if version != VERSION:
        raise ShardError(f"{path}: shard version {version} is not supported (expected {VERSION}: uint16 tokens)")
    expected = HEADER_BYTES + num_tokens * TOKEN_DTYPE.itemsize
    if num_tokens < 0 or size != expected:
        raise ShardError(f"{path}: header says {num_tokens} tokens ({expected} bytes) but the file has {size} "
                         "bytes; it is truncated or corrupt: delete it and download or tokenize it again")
    return num_tokens


def read_tokenizer_sha256(path):
    """The sha256 (hex) of the tokenizer recorded in a shard's header, or None when the header records none."""
    read_header(path)
    raw = np.fromfile(os.fspath(path), dtype="<i4", count=HEADER_INTS)[TOKENIZER_INTS].tobytes()
    return raw.hex() if any(raw) else None


def read_shard(path):
    """Returns the shard's tokens as a read-only memory-mapped uint16 array (no copy, no full read)."""
    num_tokens = read_header(path)
    if num_tokens == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(num_tokens,))


def write_shard(path, tokens, tokenizer_sha256=None):
    """Writes tokens (any integer array with values < 65536) as a shard, atomically; tokenizer_sha256 (hex), when
    given, goes into the header so that the shard names the tokenizer that made it wherever it is copied."""
    path = os.fspath(path)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{path}: tokens must be a 1-D array, got shape {tokens.shape}")
    if tokens.dtype != TOKEN_DTYPE:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= MAX_VOCAB):
            raise ValueError(f"{path}: token ids must lie in [0, {MAX_VOCAB}) to fit the uint16 shard format")
        tokens = tokens.astype(TOKEN_DTYPE)
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, len(tokens))
    if tokenizer_sha256:
        digest = bytes.fromhex(tokenizer_sha256)
        if len(digest) != 32:
            raise ValueError(f"{path}: tokenizer_sha256 must be 64 hex digits, got {tokenizer_sha256!r}")
        header[TOKENIZER_INTS] = np.frombuffer(digest, dtype="<i4")
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(header.tobytes())
            f.write(tokens.tobytes())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
