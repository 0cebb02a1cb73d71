"""A text corpus on disk: the hub's layout of parquet shards with a `text` column, or plain text files.

The files of a corpus folder, sorted by name, are its documents' order; the last file is the validation
file (as in the hub datasets we use). A parquet file holds one document per row; a `.txt` file is one
document. Reading goes by parquet row group, the unit that tokenization parallelizes over and resumes from.
"""

import os
from dataclasses import dataclass

import pyarrow.parquet as pq

CORPUS_SUFFIXES = (".parquet", ".txt")


class CorpusError(ValueError):
    """A corpus folder or file that cannot be used; the message says what to do."""


def corpus_files(folder, max_train_files=None):
    """Returns (train_files, val_file) of a corpus folder: every data file but the last (or the first
    max_train_files of them: a folder that is still filling, or holds more than a run is meant to use), and the
    last."""
    if not os.path.isdir(folder):
        raise CorpusError(f"{folder}: no such corpus folder; download one first (python -m data.download --help)")
    files = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                   if name.endswith(CORPUS_SUFFIXES) and not name.startswith("."))
    if len(files) < 2:
        raise CorpusError(f"{folder}: a corpus needs at least 2 files (.parquet or .txt; the last one is the "
                          f"validation file), found {len(files)}")
    return files[:-1][:max_train_files], files[-1]


@dataclass(frozen=True)
class Block:
    """A contiguous run of documents in one file: rows [start, stop) of parquet row group `group`."""
    path: str
    group: int
    start: int
    stop: int
    first_row: int  # index in the file of row `start` of this group


def file_blocks(path, start_row=0):
    """The file's row groups as Blocks, from the one holding `start_row` on (skipping rows before it)."""
    if path.endswith(".txt"):
        return [Block(path, 0, 0, 1, 0)] if start_row == 0 else []
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise CorpusError(f"{path}: not a readable parquet file ({e}); delete it and download it again") from None
    if "text" not in parquet.schema_arrow.names:
        raise CorpusError(f"{path}: parquet file has no 'text' column (columns: {parquet.schema_arrow.names})")
    meta = parquet.metadata
    leaves = [parquet.schema.column(i).path for i in range(meta.num_columns)]  # statistics are per leaf column
    text = leaves.index("text") if "text" in leaves else None
    blocks, first_row = [], 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        statistics = None if text is None else meta.row_group(group).column(text).statistics  # found before any work
        if statistics is not None and statistics.has_null_count and statistics.null_count:
            raise no_text(path, f"row group {group}")
        if first_row + rows > start_row:
            blocks.append(Block(path, group, max(0, start_row - first_row), rows, first_row))
        first_row += rows
    return blocks


def read_block(block):
    """The documents (strings) of a Block."""
    if block.path.endswith(".txt"):
        try:
            with open(block.path, encoding="utf-8") as f:
                return [f.read()]
        except UnicodeDecodeError as e:
            raise CorpusError(f"{block.path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                              "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) or remove it from the corpus "
                              "folder") from None
    column = pq.ParquetFile(block.path).read_row_group(block.group, columns=["text"]).column("text")
    documents = column.slice(block.start, block.stop - block.start).to_pylist()
    if None in documents:
        raise no_text(block.path, f"row {block.first_row + block.start + documents.index(None)}")
    return documents


def no_text(path, where):
    return CorpusError(f"{path}: {where} has a null text (a row without a document); drop such rows (e.g. "
                       "table.filter(pyarrow.compute.is_valid(table['text']))) or remove the file from the corpus folder")


def iter_documents(paths, max_chars=None, doc_cap=None):
    """Yields the documents of the files in order, each cut to doc_cap characters, until max_chars are given. A
    .txt file is one document, often a long one: it is cut into pieces of doc_cap characters, all of them given."""
    given = 0
    for path in paths:
        for block in file_blocks(path):
            documents = read_block(block)
            if doc_cap and path.endswith(".txt"):
                documents = [piece for doc in documents for piece in
                             (doc[start:start + doc_cap] for start in range(0, len(doc), doc_cap))]
            for doc in documents:
                if doc_cap:
                    doc = doc[:doc_cap]
                if max_chars is not None and given + len(doc) > max_chars:
                    doc = doc[:max_chars - given]
                if doc:
                    yield doc
                given += len(doc)
                if max_chars is not None and given >= max_chars:
                    return
