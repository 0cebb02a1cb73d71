"""The BPE tokenizer: training, encoding, specials, byte lengths, plain-data storage, argument checks."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from data.tokenizer import (BOS, GPT4_SPELLING, NUM_SPECIAL_SLOTS, SPLIT_PATTERN, Tokenizer, TokenizerError, check_vocab_size,
                            gpt2_tokenizer, load_tokenizer, main, train_tokenizer)
from tests.conftest import make_documents

GPT2_RANKS = Path(__file__).resolve().parents[2] / "shared" / "tokenizers" / "gpt2.tiktoken"
TRICKY = ["Hello, world! It's 2026: 1234567 apples cost $3.50.\n\n  indented   text\t\ttabs\r\nwindows",
          "café naïve über straße Москва 東京 🙂 emoji", "   leading spaces", "trailing spaces   ", "", "x",
          "they'll've I'M DON'T\n\n\n", "<|bos|> is just text here", "a\u00a0non-breaking space"]


def test_trained_tokenizer_has_the_exact_vocab_and_bos_after_the_merges(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert tok.vocab_size == 512
    assert len(tok.ranks) == 512 - NUM_SPECIAL_SLOTS
    assert tok.bos_id == 512 - NUM_SPECIAL_SLOTS and tok.special_tokens[BOS] == tok.bos_id
    assert sorted(tok.special_tokens.values()) == list(range(504, 512))
    assert tok.enc.n_vocab == 512


@pytest.mark.parametrize("text", TRICKY)
def test_encode_decode_round_trip(tokenizer_dir, text):
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.encode_to_numpy(text).tolist() == ids


def test_special_token_text_in_a_document_is_never_a_special_token(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    ids = tok.encode("before <|bos|> after <|reserved_1|>")
    assert not set(ids) & set(tok.special_tokens.values())
    assert tok.encode("hi", bos=True)[0] == tok.bos_id and tok.bos_id not in tok.encode("hi")


def test_token_byte_lengths_sum_to_the_utf8_length_and_specials_count_zero(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    lengths = np.load(os.path.join(tokenizer_dir, "token_bytes.npy"), allow_pickle=False)
    assert lengths.dtype == np.int32 and lengths.shape == (512,)
    np.testing.assert_array_equal(lengths, tok.token_bytes())
    assert (lengths[tok.bos_id:] == 0).all() and (lengths[:256] == 1).all() and (lengths[:tok.bos_id] >= 1).all()
    for text in TRICKY:
        assert lengths[tok.encode(text, bos=True)].sum() == len(text.encode("utf-8"))


def test_numbers_split_in_groups_of_at_most_two_digits(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    pieces = [tok.decode([i]) for i in tok.encode("1234567 89 0")]
    assert "".join(pieces) == "1234567 89 0"
    assert all(len(p.strip()) <= 2 for p in pieces if p.strip().isdigit())


def test_split_pattern_without_possessives_encodes_like_gpt4_style_with_them(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert GPT4_SPELLING.count("?+") == 1 and GPT4_SPELLING.count("++") == 1
    gpt4_style = Tokenizer(tok.ranks, GPT4_SPELLING, tok.special_tokens, BOS)
    for text in TRICKY + make_documents(50, seed=7):
        assert gpt4_style.encode(text) == tok.encode(text)


def test_saved_files_are_plain_data_and_load_back_identically(tokenizer_dir):
    names = sorted(os.listdir(tokenizer_dir))
    assert names == ["report.json", "token_bytes.npy", "tokenizer.json", "tokenizer.tiktoken"]
    meta = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert meta["pattern"] == SPLIT_PATTERN and meta["bos_token"] == BOS and meta["vocab_size"] == 512
    first = (tokenizer_dir / "tokenizer.tiktoken").read_text().splitlines()[0]
    assert first.split() == ["AA==", "0"]  # base64 of byte 0, rank 0
    report = json.loads((tokenizer_dir / "report.json").read_text())
    assert report["tokenizers"]["bpe512"]["bytes_per_token"] > 1.5


def test_tampered_ranks_file_is_refused(tokenizer_dir, tmp_path):
    copy = tmp_path / "tok"
    copy.mkdir()
    for name in os.listdir(tokenizer_dir):
        (copy / name).write_bytes((tokenizer_dir / name).read_bytes())
    lines = (copy / "tokenizer.tiktoken").read_text().splitlines()
    lines[300], lines[301] = lines[301].split()[0] + " 300", lines[300].split()[0] + " 301"
    (copy / "tokenizer.tiktoken").write_text("\n".join(lines) + "\n")
    with pytest.raises(TokenizerError, match="sha256 does not match"):
        load_tokenizer(copy)


def test_missing_tokenizer_says_how_to_make_one(tmp_path):
    with pytest.raises(TokenizerError, match="python -m data.tokenizer train"):
        load_tokenizer(tmp_path)


@pytest.mark.parametrize("vocab_size", [0, 100, 255, 256 + NUM_SPECIAL_SLOTS - 1, 65537, 512.0])
def test_vocab_sizes_that_rustbpe_cannot_train_are_refused_before_it_runs(vocab_size):
    with pytest.raises(TokenizerError, match="vocab size"):
        check_vocab_size(vocab_size)
    with pytest.raises(TokenizerError, match="vocab size"):
        train_tokenizer(iter(["never read"]), vocab_size)


def test_cli_bad_vocab_fails_in_one_line_and_keeps_the_existing_tokenizer(corpus, tokenizer_dir, capsys):
    before = (tokenizer_dir / "tokenizer.tiktoken").read_bytes()
    with pytest.raises(SystemExit, match="vocab size 100 must be"):
        main(["train", "--corpus", str(corpus), "--out", str(tokenizer_dir), "--vocab-size", "100", "--force"])
    with pytest.raises(SystemExit, match="already there; pass --force"):
        main(["train", "--corpus", str(corpus), "--out", str(tokenizer_dir), "--vocab-size", "512"])
    assert (tokenizer_dir / "tokenizer.tiktoken").read_bytes() == before


@pytest.mark.parametrize("force", [[], ["--force"]])
@pytest.mark.parametrize("command", ["train", "import-gpt2"])
def test_a_folder_that_is_not_a_tokenizer_is_never_written_into_or_replaced(corpus, tmp_path, command, force):
    """--out pointed at a parent folder (data/tokenizers, data, .) must not wipe what is there."""
    (tmp_path / "other_tokenizer").mkdir()
    (tmp_path / "other_tokenizer" / "tokenizer.tiktoken").write_text("precious")
    (tmp_path / "NOTES.md").write_text("notes")
    args = ["--corpus", str(corpus), "--vocab-size", "300"] if command == "train" else ["--ranks", "never-read"]
    with pytest.raises(SystemExit) as exc:
        main([command, "--out", str(tmp_path), *args, *force])
    assert exc.value.code == f"error: {tmp_path}: holds other things than a tokenizer (NOTES.md, ...); give a new " \
                             "or empty folder for the tokenizer"
    assert sorted(os.listdir(tmp_path)) == ["NOTES.md", "other_tokenizer"]
    assert (tmp_path / "other_tokenizer" / "tokenizer.tiktoken").read_text() == "precious"


def test_a_tokenizer_folder_left_half_written_is_written_again_without_force(corpus, tmp_path):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.tiktoken").write_text("cut short")  # tokenizer.json comes last: not there yet
    main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "tok"), "--vocab-size", "300"])
    assert load_tokenizer(tmp_path / "tok").vocab_size == 300


def test_too_little_text_for_the_vocab_is_a_clear_error():
    with pytest.raises(TokenizerError, match="give more text or a smaller vocab"):
        train_tokenizer(iter(["ab ab ab"]), 1024)


def test_training_is_deterministic(corpus, tmp_path):
    for name in ("a", "b"):
        main(["train", "--corpus", str(corpus), "--out", str(tmp_path / name), "--vocab-size", "300"])
    assert (tmp_path / "a" / "tokenizer.tiktoken").read_bytes() == (tmp_path / "b" / "tokenizer.tiktoken").read_bytes()


def test_max_chars_limits_the_training_text(corpus, tmp_path):
    main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "t"), "--vocab-size", "300",
          "--max-chars", "5000"])
    assert json.loads((tmp_path / "t" / "report.json").read_text())["train_chars"] == 5000


def test_max_train_files_trains_on_the_first_files_whatever_else_the_folder_holds(corpus, tmp_path):
    """A folder that is still filling (speedrun.sh downloads the rest while the tokenizer trains) gives the same
    tokenizer as one that holds only those files."""
    train_files = sorted(p.name for p in corpus.glob("*.parquet"))[:-1]
    only = tmp_path / "only"
    only.mkdir()
    for name in (train_files[0], sorted(p.name for p in corpus.glob("*.parquet"))[-1]):
        (only / name).write_bytes((corpus / name).read_bytes())
    main(["train", "--corpus", str(only), "--out", str(tmp_path / "a"), "--vocab-size", "300"])
    main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "b"), "--vocab-size", "300", "--max-train-files", "1"])
    assert (tmp_path / "a" / "tokenizer.tiktoken").read_bytes() == (tmp_path / "b" / "tokenizer.tiktoken").read_bytes()


def test_a_long_txt_document_is_trained_on_whole_in_doc_cap_pieces(tmp_path):
    corpus = tmp_path / "texts"
    corpus.mkdir()
    text = " ".join(f"word{i % 500} and{i % 7} more" for i in range(20_000))  # one file: one document of 400k chars
    (corpus / "a.txt").write_text(text)
    (corpus / "b.txt").write_text("the val document")
    main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "t"), "--vocab-size", "300"])
    assert json.loads((tmp_path / "t" / "report.json").read_text())["train_chars"] == len(text)  # not 10,000


@pytest.mark.skipif(not GPT2_RANKS.exists(), reason="needs ../shared/tokenizers/gpt2.tiktoken")
def test_gpt2_tokenizer_from_its_ranks_file(tmp_path):
    gpt2 = gpt2_tokenizer(str(GPT2_RANKS))
    assert gpt2.vocab_size == 50257 and gpt2.bos_id == 50256
    assert gpt2.encode("Hello world") == [15496, 995]
    main(["import-gpt2", "--ranks", str(GPT2_RANKS), "--out", str(tmp_path / "gpt2")])
    assert load_tokenizer(tmp_path / "gpt2").encode(TRICKY[0]) == gpt2.encode(TRICKY[0])


def test_a_file_that_is_not_gpt2_ranks_is_refused(tokenizer_dir):
    with pytest.raises(TokenizerError, match="GPT-2 has 50256"):
        gpt2_tokenizer(str(tokenizer_dir / "tokenizer.tiktoken"))


def test_nanochats_nine_special_tokens_take_one_more_id_from_the_merges(corpus, tmp_path):
    """--special-tokens=chat: BOS and nanochat's eight conversation and tool delimiters after the merges (a vocab of
    300 holds 291 merge ranks), saved and loaded back; a vocab too small for them is refused before training."""
    main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "chat"), "--vocab-size", "300",
          "--special-tokens", "chat"])
    tok = load_tokenizer(tmp_path / "chat")
    assert tok.vocab_size == 300 and tok.bos_id == 291 and len(tok.special_tokens) == 9
    assert tok.special_tokens["<|output_end|>"] == 299 and "<|assistant_start|>" in tok.special_tokens
    with pytest.raises(TokenizerError, match=r"\[265, 65536\]: 256 byte tokens \+ 9 special slots"):
        check_vocab_size(264, "chat")
    check_vocab_size(264)  # the reserved set's 8
