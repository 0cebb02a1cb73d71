"""train_gpt.py on CPU: the loader, the math, exact resumption, honest timing, and every bad input's message."""

import contextlib
import dataclasses
import json
import shutil
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

import harness.checkpoint
import harness.evaluate
import harness.loop
import train_gpt
from data.shards import ShardError, read_shard, read_tokenizer_sha256, write_shard
from data.tokenize import tokenize_corpus
from data.tokenizer import sha256_file
from harness.config import ConfigError
from harness.data import DataLoader, DocumentLoader, load_tokenizer_info, load_val_tokens
from harness.evaluate import evaluate, val_totals
from harness.runlog import peak_flops
from harness.trace import flops_per_token
from tests.helpers import config_of, main, train
from train_gpt import Config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shards(corpus, tokenizer_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train_shards")
    tokenize_corpus(str(corpus), str(tokenizer_dir), str(out), shard_tokens=20_000, workers=1)
    return out


@pytest.fixture
def options(shards, tokenizer_dir, tmp_path):
    """A tiny model on the synthetic corpus: a few seconds for a handful of steps."""
    return dict(train_files=f"{shards}/train_*.bin", val_files=f"{shards}/val_*.bin", tokenizer=str(tokenizer_dir),
                depth=2, model_dim=32, head_dim=16, seq_len=64, short_window=16, device_batch=2,
                total_batch_tokens=256, steps=6, warmup_steps=2, warmup_timing_steps=1, val_tokens=2048,
                val_every=0, out_dir=str(tmp_path / "runs"), run_id="run")


def argv(options, **changes):
    return [f"--{k}={v}" for k, v in {**options, **changes}.items()]


def run(options, **changes):
    """Runs train_gpt in this process; returns (results or None, the log's step lines as dicts)."""
    config = config_of(*argv(options, **changes))
    results = train(config)
    return results, log_lines(Path(config.out_dir) / config.run_id / "log.txt")


@contextlib.contextmanager
def as_a_crash():
    """--stop_after leaves with a checkpoint of its last step; a crash leaves only the last --save_every one. Within
    this, a stop leaves as a crash would: a save at a step that is not a multiple of --save_every is skipped."""
    real = harness.checkpoint.save_checkpoint

    def periodic_only(path, model, optimizer, loader, progress, config, rank=0):
        if "status" in progress or (config.save_every and progress["step"] % config.save_every == 0):
            real(path, model, optimizer, loader, progress, config, rank)
    with mock.patch.object(harness.loop, "save_checkpoint", periodic_only):
        yield


def log_lines(path):
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("step:") and ("train_loss:" in line or "val_loss:" in line):
            fields = dict(field.split(":", 1) for field in line.split() if ":" in field)
            lines.append(fields)
    return lines


def losses(lines, key="train_loss"):
    return {int(l["step"].split("/")[0]): float(l[key]) for l in lines if key in l}


# -----------------------------------------------------------------------------
# A whole run


@pytest.mark.parametrize("name, peak", [("NVIDIA H100 80GB HBM3", 989.5e12), ("NVIDIA H100 PCIe", 756e12),
                                        ("NVIDIA H100 NVL", 835e12), ("NVIDIA GH200 480GB", 989.5e12),
                                        ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA GeForce RTX 4090", None)])
def test_peak_flops_follows_the_device_name_and_the_override(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(Config(), torch.device("cuda")) == peak  # MFU against the card's own peak
    assert peak_flops(Config(peak_flops=1e15), torch.device("cuda")) == 1e15
    assert peak_flops(Config(), torch.device("cpu")) is None


def test_tiny_run_learns_and_writes_a_record_ready_log_and_results(options, corpus, tmp_path):
    results, lines = run(options, steps=30, val_every=15, warmup_steps=3)
    train = losses(lines)
    assert len(train) == 30 and np.mean([train[s] for s in (28, 29, 30)]) < train[1] - 0.5
    log = (tmp_path / "runs" / "run" / "log.txt").read_text()
    assert log.startswith(Path(train_gpt.__file__).read_text())  # the log opens with the exact source
    for key in ("git:", "command:", "config:", "environment:"):
        assert f"\n{key} " in log
    saved = json.loads((tmp_path / "runs" / "run" / "results.json").read_text())
    assert saved["schema_version"] == 1 and saved["status"] == "finished" and saved["steps"] == 30
    assert saved["tokens"] == 30 * 256 and saved["model_flops"] == saved["model_flops_per_token"] * 30 * 256
    # the FLOPs are those of the model trained (counted from it: tests/test_flops.py), in the log's model line too
    assert saved["model_flops_per_token"] == flops_per_token(train_gpt, config_of(*argv(options)), saved["vocab_size"])
    assert f"; {saved['model_flops_per_token']:,} FLOPs/token;" in log
    assert saved["val_loss"] == pytest.approx(losses(lines, "val_loss")[30])
    assert 0 < saved["val_bpb"] < saved["val_loss"] * 2
    assert saved["mfu"] is None and saved["hardware_flops"] is None  # no peak FLOPs for a CPU
    assert saved["training_time_s"] > 0 and saved["wall_time_s"] > saved["training_time_s"] + saved["eval_time_s"]
    assert saved["data"]["tokenizer_sha256"] and saved["git"].keys() == {"commit", "dirty", "diff_sha256"}
    assert saved == json.loads(json.dumps(results))
    data = json.loads(next(l for l in log.splitlines() if l.startswith("data: "))[len("data: "):])
    train_shards = sorted(Path(options["train_files"]).parent.glob("train_*.bin"))
    assert data["train_shards"] == [{"name": p.name, "sha256": sha256_file(p)} for p in train_shards]
    assert [f["name"] for f in data["val_shards"]] == ["val_000000.bin"]
    assert [f["name"] for f in data["train_source"]] == ["shard_00000.parquet", "shard_00001.parquet",
                                                         "shard_00002.parquet"]
    assert data["val_source"] == [{"name": "shard_00003.parquet", "sha256": sha256_file(corpus / "shard_00003.parquet")}]
    assert all(len(f["sha256"]) == 64 for key in ("val_shards", "train_source", "val_source") for f in data[key])
    assert data["val_tokens"] == 2048 and data["val_bytes"] > 2048  # mostly multi-byte tokens
    measured = json.loads((train_shards[0].parent / "overlap.json").read_text())  # data.tokenize wrote it
    assert data["val_overlap"] == {k: measured[k] for k in ("fraction", "ngram", "stride", "val_tokens_checked")}
    assert "note: no val/train overlap measured" not in log


def data_line(tmp_path, run_id):
    log = (tmp_path / "runs" / run_id / "log.txt").read_text()
    return json.loads(next(l for l in log.splitlines() if l.startswith("data: "))[len("data: "):]), log


def test_the_val_overlap_is_logged_only_for_the_shards_it_was_measured_on(options, shards, tmp_path):
    """A subset of the measured train shards keeps the figure (a superset's overlap bounds it); shards copied
    elsewhere without overlap.json log none, and a note says how to measure it."""
    run(options, run_id="subset", steps=2, train_files=f"{shards}/train_000000.bin")
    assert data_line(tmp_path, "subset")[0]["val_overlap"]["ngram"] == 32
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in shards.glob("*.bin"):
        shutil.copy(path, copy / path.name)
    run(options, run_id="copied", steps=2, train_files=f"{copy}/train_*.bin", val_files=f"{copy}/val_*.bin")
    data, log = data_line(tmp_path, "copied")
    assert data["val_overlap"] is None and "note: no val/train overlap measured for these shards" in log


def test_one_process_matches_two_gloo_processes_with_half_the_accumulation(options, tmp_path):
    """4 rows per step of 2 per pass: 1 process x 2 accumulation steps against 2 processes x 1."""
    _, single = run(options, run_id="one")
    assert "gradient accumulation 2, world size 1" in (tmp_path / "runs" / "one" / "log.txt").read_text()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(REPO / "train_gpt.py"), *argv(options, run_id="two")]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    double = log_lines(tmp_path / "runs" / "two" / "log.txt")
    assert "gradient accumulation 1, world size 2" in (tmp_path / "runs" / "two" / "log.txt").read_text()
    one, two = losses(single), losses(double)
    assert one.keys() == two.keys() == set(range(1, 7))
    assert two[1] == pytest.approx(one[1], rel=1e-6)  # the same weights on the same rows
    for step in one:  # float sums in another order, amplified by Adam's first, sign-like updates (seen: 1.3e-4)
        assert two[step] == pytest.approx(one[step], rel=5e-4), step
    assert losses(double, "val_loss")[6] == pytest.approx(losses(single, "val_loss")[6], rel=1e-4)


def test_a_run_stopped_with_a_checkpoint_resumes_from_the_bare_file_name_in_its_folder(options, tmp_path,
                                                                                        monkeypatch):
    _, whole = run(options, run_id="whole")
    assert run(options, run_id="cut", stop_after=4)[0] is None  # no --save_every: the stop saves all the same
    folder = tmp_path / "runs" / "cut"
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["progress"]["step"] == 4
    assert f"step:4/6 stopping after 4 steps (--stop_after); resume with --resume={folder / 'checkpoint.pt'}" in \
        (folder / "log.txt").read_text()
    monkeypatch.chdir(folder)
    results, resumed = run(options, run_id="cut", resume="checkpoint.pt")
    assert [losses(resumed)[s] for s in (5, 6)] == [losses(whole)[s] for s in (5, 6)]
    assert results["run_id"] == "cut" and (folder / "results.json").exists()


def test_a_resumed_run_reports_the_times_of_the_whole_run(options, monkeypatch):
    """Training, warm-up, evaluation and wall time all add up over the starts of a run: each step takes 0.3 s more
    here, so the wall time of the second start alone would be less than the training time of both."""
    real_step = harness.loop.Trainer.step

    def slow_step(self, step, num_steps):
        time.sleep(0.3)
        return real_step(self, step, num_steps)
    monkeypatch.setattr(harness.loop.Trainer, "step", slow_step)
    run(options, run_id="cut", stop_after=3)
    results, _ = run(options, run_id="cut", resume=str(Path(options["out_dir"]) / "cut" / "checkpoint.pt"))
    assert results["training_time_s"] >= 6 * 0.3 and results["warmup_time_s"] >= 2 * 0.3  # one warm-up step a start
    assert results["wall_time_s"] > results["training_time_s"] + results["warmup_time_s"] + results["eval_time_s"]


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint_and_says_so(options, tmp_path, monkeypatch):
    real_save, saves = torch.save, []

    def disk_full_on_the_second_save(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 2:
            open(path, "wb").write(b"part of a checkpoint")
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4595264 vs 4595152")
        real_save(obj, path, *args, **kwargs)
    monkeypatch.setattr(torch, "save", disk_full_on_the_second_save)
    with pytest.raises(SystemExit) as exc:
        main(argv(options, run_id="full", save_every=2))
    checkpoint = tmp_path / "runs" / "full" / "checkpoint.pt"
    assert exc.value.code == (f"error: could not write {checkpoint} ([enforce fail at inline_container.cc:664] . "
                              f"unexpected pos 4595264 vs 4595152); {checkpoint} is kept as it was. Free disk space "
                              "and resume")
    assert not list(checkpoint.parent.glob("*.tmp"))  # no half-written file left behind
    assert torch.load(checkpoint, weights_only=True)["progress"]["step"] == 2


def test_a_log_line_cut_short_is_dropped_when_the_run_resumes(options, tmp_path):
    run(options, run_id="cut", stop_after=3)
    log = tmp_path / "runs" / "cut" / "log.txt"
    whole = log.read_text()
    with open(log, "a") as f:
        f.write('step:4/6 train_loss:5.1 lr:1.0 step_')  # a kill or a full disk in the middle of a line
    run(options, run_id="cut", resume=str(log.parent / "checkpoint.pt"))
    after = log.read_text()
    assert after.startswith(whole) and "step_\n" not in after and "step_git" not in after
    from records.record import parse_log
    assert len(parse_log(str(log)).segments) == 2  # every line parses


def test_the_last_step_is_saved_once_when_save_every_divides_the_steps(options, monkeypatch):
    real, saved = harness.checkpoint.save_checkpoint, []

    def counting(path, model, optimizer, loader, progress, config, rank=0):
        saved.append((progress["step"], progress.get("status")))
        real(path, model, optimizer, loader, progress, config, rank)
    monkeypatch.setattr(harness.loop, "save_checkpoint", counting)
    run(options, run_id="saves", save_every=3)  # 6 steps
    assert saved == [(3, None), (6, "finished")]


def test_a_run_that_left_no_checkpoint_is_not_told_to_resume(options, tmp_path, monkeypatch):
    monkeypatch.setattr(harness.loop, "save_checkpoint", lambda *args: None)  # as if killed before its first save
    run(options, run_id="cut", stop_after=2)
    with pytest.raises(SystemExit) as exc:
        main(argv(options, run_id="cut"))
    assert exc.value.code == (f"error: {tmp_path / 'runs' / 'cut'} holds a run already; choose another --run_id, or "
                              "move that folder aside (it has no checkpoint to continue from) to start it again")


def test_a_run_stopped_after_step_k_and_resumed_matches_the_uninterrupted_run(options, tmp_path):
    _, whole = run(options, run_id="whole")
    with as_a_crash():  # checkpoints every 3 steps, killed after step 4 (one step past the checkpoint)
        assert run(options, run_id="cut", save_every=3, stop_after=4)[0] is None
    checkpoint = tmp_path / "runs" / "cut" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    assert state["progress"]["step"] == 3
    results, resumed = run(options, run_id="cut", resume=str(checkpoint))
    assert losses(resumed)[6] == losses(whole)[6] and losses(resumed)[4] == losses(whole)[4]
    assert [losses(resumed)[s] for s in (4, 5, 6)] == [losses(whole)[s] for s in (4, 5, 6)]
    assert losses(resumed, "val_loss")[6] == losses(whole, "val_loss")[6]
    assert results["steps"] == 6 and results["tokens"] == 6 * 256


def test_resuming_with_other_settings_is_refused(options, tmp_path):
    run(options, run_id="a", steps=2)
    checkpoint = tmp_path / "runs" / "a" / "checkpoint.pt"
    with pytest.raises(SystemExit, match="other settings \\(matrix_lr\\)"):
        main(argv(options, run_id="a", steps=2, resume=checkpoint, matrix_lr=0.1))


def test_a_checkpoint_from_before_a_new_setting_resumes_with_that_setting_at_its_default(options, tmp_path):
    run(options, run_id="old", stop_after=2)
    checkpoint = tmp_path / "runs" / "old" / "checkpoint.pt"
    state = torch.load(checkpoint, weights_only=True)
    del state["config"]["loss_chunk"]  # as saved by a train_gpt.py that did not have it yet
    torch.save(state, checkpoint)
    results, _ = run(options, run_id="old", resume=str(checkpoint))
    assert results["steps"] == 6
    with pytest.raises(SystemExit, match="other settings \\(loss_chunk\\)"):  # not its default: another run
        main(argv(options, run_id="old", resume=checkpoint, loss_chunk=7))


def test_a_second_run_into_the_same_folder_is_refused_and_the_first_is_kept(options, tmp_path):
    run(options, steps=2)
    before = {p.name: p.read_bytes() for p in (tmp_path / "runs" / "run").iterdir()}
    with pytest.raises(SystemExit, match="holds a run already; choose another --run_id, or continue it with --resume="):
        main(argv(options, steps=3))
    assert {p.name: p.read_bytes() for p in (tmp_path / "runs" / "run").iterdir()} == before


def test_timing_excludes_validation(options, monkeypatch):
    """Each validation moves the clock on by 100 s (a fake clock, so a busy machine cannot fail the test): none of
    it may land in the training time."""
    real_totals, real_clock, skipped = val_totals, time.perf_counter, [0.0]

    def slow_val_totals(*args, **kwargs):
        skipped[0] += 100.0
        return real_totals(*args, **kwargs)
    monkeypatch.setattr(harness.evaluate, "val_totals", slow_val_totals)
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + skipped[0])
    results, lines = run(options, steps=4, val_every=1)
    assert len(losses(lines, "val_loss")) == 4 and results["eval_time_s"] >= 400.0
    assert results["training_time_s"] < 100.0
    step_ms = sum(float(l["step_ms"]) for l in lines if "step_ms" in l)
    assert results["training_time_s"] == pytest.approx(step_ms / 1000, rel=1e-3)  # the steps' times, nothing else


def test_a_loss_or_weights_that_are_not_finite_stop_the_run_naming_the_step_and_keep_a_finite_checkpoint(options,
                                                                                                       tmp_path):
    """The loss read before a save is that of the weights before the last update: an update that breaks the weights
    shows first in the weights themselves, and the checkpoint it would replace is kept."""
    with pytest.raises(SystemExit) as exc:
        main(argv(options, matrix_lr=1e30, embed_lr=1e30, head_lr=1e30, scalar_lr=1e30, steps=20, save_every=1))
    checkpoint = tmp_path / "runs" / "run" / "checkpoint.pt"
    assert re.fullmatch(rf"error: step \d+: the weights are not finite after this step's update; {checkpoint} is kept "
                        r"as it was\. Try a lower lr", exc.value.code), exc.value.code
    state = torch.load(checkpoint, weights_only=True)
    assert all(t.isfinite().all() for t in state["model"].values())
    with pytest.raises(SystemExit, match=r"step \d+: train loss is (nan|inf)"):  # save_every=0: the loss reads it
        main(argv(options, run_id="nosave", matrix_lr=1e30, embed_lr=1e30, head_lr=1e30, scalar_lr=1e30, steps=20))
    assert "the loss is not finite" in (tmp_path / "runs" / "nosave" / "log.txt").read_text()


# -----------------------------------------------------------------------------
# The data loader


def make_loader(shards, tokenizer_dir, rank=0, world=1, rows_per_step=8, seq_len=64, seed=0, pattern=None):
    vocab = load_tokenizer_info(str(tokenizer_dir))["vocab_size"]
    return DataLoader(pattern or f"{shards}/train_*.bin", seq_len, rows_per_step, rank, world, seed,
                      torch.device("cpu"), vocab)


def rows_of(batches):
    """The rows (inputs and the last target) of a list of (inputs, targets) batches, as tuples."""
    return [tuple(i.tolist()) + (int(t[-1]),) for inputs, targets in batches for i, t in zip(inputs, targets)]


def test_rows_are_consecutive_slices_that_cover_every_shard_once_per_epoch(shards, tokenizer_dir):
    loader = make_loader(shards, tokenizer_dir)
    per_epoch = sum(loader.shard_rows)
    batches = [loader.next_batch() for _ in range(per_epoch // 8 + 2)]  # a little into the second epoch
    for inputs, targets in batches:
        assert inputs.shape == (8, 64) and (inputs[:, 1:] == targets[:, :-1]).all()
    expected, total, targets_covered = [], 0, 0
    for path in loader.files:
        tokens = np.asarray(read_shard(path))
        rows = (len(tokens) - 1) // 64
        expected += [tuple(tokens[k * 64:k * 64 + 65].tolist()) for k in range(rows)]
        total, targets_covered = total + len(tokens), targets_covered + rows * 64
        assert len(tokens) - 1 - rows * 64 < 64  # the only tokens left out: the shard's first, and < seq_len at its end
    assert sorted(rows_of(batches)[:per_epoch]) == sorted(expected)  # each slice exactly once in the first epoch
    assert loader.fraction_used == targets_covered / total > 0.99
    assert 1 < loader.epochs() < 1.1


def test_ranks_share_a_step_without_overlap_and_together_make_the_single_process_step(shards, tokenizer_dir):
    single = make_loader(shards, tokenizer_dir)
    ranks = [make_loader(shards, tokenizer_dir, rank=r, world=2) for r in range(2)]
    for _ in range(100):  # crosses shard and epoch boundaries
        whole = single.next_batch()[0]
        parts = [loader.next_batch()[0] for loader in ranks]
        assert parts[0].shape == (4, 64)
        rows = lambda t: {tuple(r.tolist()) for r in t}
        assert not rows(parts[0]) & rows(parts[1])
        assert rows(parts[0]) | rows(parts[1]) == rows(whole)
        assert ranks[0].state_dict() == ranks[1].state_dict() == single.state_dict()


def test_loader_state_restores_exactly(shards, tokenizer_dir):
    loader = make_loader(shards, tokenizer_dir)
    for _ in range(7):
        loader.next_batch()
    state = loader.state_dict()
    expected = [loader.next_batch()[0] for _ in range(100)]  # crosses shard and epoch boundaries
    assert loader.state_dict()["epoch"] >= 1
    fresh = make_loader(shards, tokenizer_dir)
    fresh.load_state_dict(state)
    assert fresh.epochs() == pytest.approx(7 * 8 / sum(fresh.shard_rows))
    for batch in expected:
        assert torch.equal(fresh.next_batch()[0], batch)
    assert fresh.state_dict() == loader.state_dict()


def test_a_position_in_other_shards_is_refused_naming_the_change(shards, tokenizer_dir, tmp_path):
    """Shards added, removed or re-tokenized change the shard order and the rows: a saved position means nothing
    there (it would replay used rows and skip others, or wait forever for rows a shorter shard does not have)."""
    loader = make_loader(shards, tokenizer_dir)
    loader.next_batch()
    state = loader.state_dict()
    pattern = copy_shards(shards, tmp_path / "more", "train")
    last = sorted((tmp_path / "more").glob("train_*.bin"))[-1]
    write_shard(tmp_path / "more" / "train_999999.bin", np.asarray(read_shard(last)))
    with pytest.raises(ConfigError, match=rf"the training shards changed since the checkpoint \("
                                                    rf"{len(loader.files)} shards then, {len(loader.files) + 1} now\)"):
        make_loader(shards, tokenizer_dir, pattern=pattern).load_state_dict(state)
    write_shard(last, np.asarray(read_shard(last))[:-100])  # the same names, one shard shorter
    os.remove(tmp_path / "more" / "train_999999.bin")
    with pytest.raises(ConfigError, match=rf"\({last.name} \([\d,]+ tokens\) then, {last.name} "
                                                    r"\([\d,]+ tokens\) now\); resume with the shards it was made"):
        make_loader(shards, tokenizer_dir, pattern=pattern).load_state_dict(state)


def document_loader(shards, tokenizer_dir, rank=0, world=1, rows_per_step=8, seq_len=64, seed=0, **choices):
    info = load_tokenizer_info(str(tokenizer_dir))
    return DocumentLoader(f"{shards}/train_*.bin", seq_len, rows_per_step, rank, world, seed, torch.device("cpu"),
                          info["vocab_size"], info["bos_id"], **choices)


def test_the_document_that_fills_a_row_is_the_oldest_or_the_shortest_of_the_pool(shards, tokenizer_dir):
    """When no pooled document fits what is left of a row: the oldest is cropped, or with crop="shortest"
    (nanochat's) the shortest; the pool keeps its size."""
    for crop in ("oldest", "shortest"):
        loader = document_loader(shards, tokenizer_dir, pool=12, crop=crop)
        state = dict(loader.state, pool=[])
        pool = [loader._next_doc(state) for _ in range(12)]
        lengths = np.array([length for *_, length in pool])
        need = int(lengths.min()) - 1  # nothing fits: the row is one crop
        expected = pool[0] if crop == "oldest" else pool[int(np.argmin(lengths))]
        row = loader._pack_row(state, pool, lengths, need)
        assert row.tolist() == np.asarray(loader.document(expected[0], expected[1])[:need]).tolist()
        assert expected not in pool and len(pool) == 12 and state["dropped"] == expected[2] - need


def test_document_rows_start_at_bos_hold_whole_documents_packed_best_fit_and_count_what_is_cropped(shards,
                                                                                                  tokenizer_dir):
    """--rows=documents: every row starts at BOS and is made of document prefixes (whole documents but the one that
    fills it, cropped); every document of the stream is used in order of the pool; used + dropped = the documents'
    tokens taken; the tokens of a step do not depend on the world size; a saved state resumes exactly, pool included."""
    bos = load_tokenizer_info(str(tokenizer_dir))["bos_id"]
    loader = document_loader(shards, tokenizer_dir)
    documents = {tuple(np.asarray(loader.document(i, d)).tolist()) for i in range(len(loader.files))
                 for d in range(loader.shard_docs[i])}
    prefixes = {doc[:k] for doc in documents for k in range(1, len(doc) + 1)}
    whole = set(documents)
    batches = [loader.next_batch() for _ in range(30)]
    cropped = 0
    for inputs, targets in batches:
        assert inputs.shape == (8, 64) and (inputs[:, 0] == bos).all() and (inputs[:, 1:] == targets[:, :-1]).all()
        for row in torch.cat([inputs, targets[:, -1:]], dim=1).tolist():
            starts = [k for k, token in enumerate(row) if token == bos] + [len(row)]
            pieces = [tuple(row[a:b]) for a, b in zip(starts, starts[1:])]
            assert all(piece in prefixes for piece in pieces)
            assert all(piece in whole for piece in pieces[:-1])  # only the piece that fills the row may be cut
            cropped += pieces[-1] not in whole
    state = loader.state
    assert state["used"] == 30 * 8 * 65 and state["dropped"] > 0 and cropped > 0
    assert 0 < loader.fraction_used < 1 and "dropped by cropping" in loader.dropped_text()
    saved = loader.state_dict()
    expected = [loader.next_batch()[0] for _ in range(10)]
    fresh = document_loader(shards, tokenizer_dir)
    fresh.load_state_dict(saved)
    assert all(torch.equal(fresh.next_batch()[0], batch) for batch in expected)
    single, ranks = document_loader(shards, tokenizer_dir), [document_loader(shards, tokenizer_dir, r, 2) for r in (0, 1)]
    for _ in range(20):
        rows = lambda t: sorted(tuple(r.tolist()) for r in t)
        parts = [rank.next_batch()[0] for rank in ranks]
        assert rows(torch.cat(parts)) == rows(single.next_batch()[0])


def test_the_seed_sets_the_order(shards, tokenizer_dir):
    batches = {seed: [make_loader(shards, tokenizer_dir, seed=seed).next_batch()[0] for _ in range(1)]
               for seed in (0, 1)}
    same = [make_loader(shards, tokenizer_dir, seed=0).next_batch()[0]]
    assert torch.equal(same[0], batches[0][0]) and not torch.equal(batches[0][0], batches[1][0])
    orders = [make_loader(shards, tokenizer_dir, seed=s).shard_order(0).tolist() for s in range(6)]
    assert len({tuple(o) for o in orders}) > 1


def test_a_step_mixes_rows_from_all_over_the_shard(shards, tokenizer_dir):
    """Shuffled rows: a step's rows are not neighbours (which would all come from one or two documents)."""
    loader = make_loader(shards, tokenizer_dir)
    first = np.asarray(read_shard(loader.files[loader.shard_order(0)[0]]))
    starts = {tuple(first[k * 64:k * 64 + 64].tolist()): k for k in range((len(first) - 1) // 64)}
    positions = sorted(starts[tuple(row.tolist())] for row in loader.next_batch()[0])
    assert positions[-1] - positions[0] > 8 * 4


def test_a_run_logs_the_fraction_of_tokens_used_and_the_epoch(options, tmp_path):
    run(options, steps=3)
    log = (tmp_path / "runs" / "run" / "log.txt").read_text().splitlines()
    loader = make_loader(Path(options["train_files"]).parent, options["tokenizer"])
    epochs = 3 * 4 / sum(loader.shard_rows)  # 3 steps of 256 tokens: 4 rows of 64
    assert f"loader: 47,902 training tokens in 3 shards; rows are shuffled consecutive slices of 65 tokens: " \
           f"{100 * loader.fraction_used:.2f}% of the tokens are targets once per epoch; 3 steps of 4 rows are " \
           f"{epochs:.3f} epochs" in log
    assert f"loader: epoch {epochs:.3f} reached (768 tokens trained on)" in log


def test_seq_len_longer_than_every_shard_is_refused_when_the_loader_is_made(shards, tokenizer_dir):
    with pytest.raises(ConfigError, match="no shard holds a row of --seq_len \\+ 1 = 100001 tokens"):
        make_loader(shards, tokenizer_dir, seq_len=100_000)


def test_a_shard_with_a_token_outside_the_vocab_is_named_before_it_reaches_the_embedding(tokenizer_dir, tmp_path):
    for i in range(3):
        write_shard(tmp_path / f"train_{i}.bin", np.arange(1000) % 300)
    loader = make_loader(None, tokenizer_dir, rows_per_step=8, pattern=f"{tmp_path}/train_*.bin")
    first, later = (loader.files[i] for i in loader.shard_order(0)[:2])
    write_shard(later, np.r_[np.arange(999) % 300, 4000])  # same length, the last token out of the vocab of 512
    with pytest.raises(ShardError, match=f"{re.escape(later)}: token id 4000 is outside the tokenizer's "
                                                   "vocab of 512; the shard is corrupt"):
        for _ in range(10):  # the background thread reaches the shard in the third step and hands the error over
            loader.next_batch()
    write_shard(first, np.r_[4000, np.arange(999) % 300])
    with pytest.raises(ShardError, match="token id 4000"):  # the first shard: at once
        make_loader(None, tokenizer_dir, pattern=f"{tmp_path}/train_*.bin")


# -----------------------------------------------------------------------------
# The data's tokenizer: recorded in each shard's header (and tokenize.json), checked for train and val alike


@pytest.fixture(scope="session")
def other_tokenizer_shards(tmp_path_factory):
    """Shards of another corpus by another tokenizer of the same vocab size (512)."""
    from data.tokenizer import main as tokenizer_main
    from tests.conftest import write_corpus
    root = tmp_path_factory.mktemp("other")
    corpus = write_corpus(root / "corpus", files=2, docs_per_file=100, seed=7)
    tokenizer_main(["train", "--corpus", str(corpus), "--out", str(root / "tok"), "--vocab-size", "512"])
    tokenize_corpus(str(corpus), str(root / "tok"), str(root / "tokens"), shard_tokens=20_000, workers=1)
    return root / "tokens"


def copy_shards(source, dest, prefix, keep_identity=True, manifest=False):
    """Copies prefix_*.bin shards; without keep_identity, as llm.c would have written them (no tokenizer)."""
    dest.mkdir(exist_ok=True)
    for path in sorted(Path(source).glob(f"{prefix}_*.bin")):
        tokens = np.asarray(read_shard(path))
        write_shard(dest / path.name, tokens, tokenizer_sha256=read_tokenizer_sha256(path) if keep_identity else None)
    if manifest:
        (dest / "tokenize.json").write_bytes((Path(source) / "tokenize.json").read_bytes())
    return f"{dest}/{prefix}_*.bin"


@pytest.mark.parametrize("manifest", [False, True])
def test_val_or_train_shards_from_another_tokenizer_of_the_same_vocab_are_refused(options, other_tokenizer_shards,
                                                                                 tmp_path, manifest):
    """By the header alone (shards copied without tokenize.json), or by tokenize.json alone (older shards)."""
    keep = not manifest
    for key, prefix in (("val_files", "val"), ("train_files", "train")):
        pattern = copy_shards(other_tokenizer_shards, tmp_path / f"{prefix}_{manifest}", prefix, keep, manifest)
        with pytest.raises(SystemExit, match=r"_000000.bin was tokenized with another tokenizer \(sha256 [0-9a-f]{12}"
                                             r"\.\.\.\) than --tokenizer=.*point --tokenizer at the one that made") as e:
            main(argv(options, **{key: pattern}))
        assert "\n" not in str(e.value.code)
    assert not (tmp_path / "runs").exists()


def test_shards_that_record_no_tokenizer_are_accepted_with_a_notice(options, tmp_path):
    folder = Path(options["train_files"]).parent
    train = copy_shards(folder, tmp_path / "plain", "train", keep_identity=False)
    val = copy_shards(folder, tmp_path / "plain", "val", keep_identity=False)
    run(options, train_files=train, val_files=val, steps=1)
    log = (tmp_path / "runs" / "run" / "log.txt").read_text()
    assert f"notice: 3 of 3 training shards ({train}) record no tokenizer" in log
    assert f"notice: 1 of 1 validation shards ({val}) record no tokenizer" in log
    run(options, run_id="identified", steps=1)
    assert "notice:" not in (tmp_path / "runs" / "identified" / "log.txt").read_text().split("=" * 100)[-1]


# -----------------------------------------------------------------------------
# Validation


def test_val_loss_does_not_depend_on_the_batch_or_the_world_size(options):
    config = config_of(*argv(options))
    info = load_tokenizer_info(config.tokenizer)
    val = load_val_tokens(config.val_files, config.val_tokens, config.seq_len)
    assert len(val) == 2048 + 1
    torch.manual_seed(0)
    model = train_gpt.GPT(config, info["vocab_size"])
    for p in model.parameters():  # not the zero-init model: its loss would be the same for any grouping
        torch.nn.init.normal_(p, std=0.05)
    off = torch.autocast("cpu", enabled=False)

    def totals(world, val_batch):
        cfg = dataclasses.replace(config, val_batch=val_batch)
        return sum(val_totals(model, val, info["token_bytes"], cfg, r, world, torch.device("cpu"), off)
                   for r in range(world))
    reference = totals(1, 32)
    assert reference[1] == 2048 and reference[3] > 2048  # every val token counted once, with its bytes
    for world, batch in ((1, 3), (2, 5), (3, 1), (4, 32)):
        assert torch.allclose(totals(world, batch), reference, rtol=1e-9), (world, batch)


def test_bits_per_byte_counts_bytes_of_targets_and_leaves_out_specials(options):
    config = config_of(*argv(options))
    info = load_tokenizer_info(config.tokenizer)
    assert info["token_bytes"][info["bos_id"]] == 0
    vocab = info["vocab_size"]

    class Uniform(torch.nn.Module):  # loss ln(vocab) on every token
        def forward(self, idx, targets, reduction):
            return torch.full(targets.shape, math.log(vocab))
    val = torch.tensor([info["bos_id"], 300, 301, info["bos_id"], 302])  # targets: 300 301 BOS 302
    cfg = dataclasses.replace(config, seq_len=4)
    loss, bpb = evaluate(Uniform(), val, info["token_bytes"], cfg, 0, 1, torch.device("cpu"),
                                   torch.autocast("cpu", enabled=False))
    nbytes = sum(int(info["token_bytes"][t]) for t in (300, 301, 302))
    assert loss == pytest.approx(math.log(vocab))
    assert bpb == pytest.approx(3 * math.log(vocab) / nbytes / math.log(2))


# -----------------------------------------------------------------------------
# Horizon and schedule (FLOPs: tests/test_flops.py)


def test_horizon_from_steps_ratio_or_flops_budget():
    from harness.schedule import BatchSchedule
    config = Config(total_batch_tokens=1000)
    horizon = lambda c: harness.loop.num_training_steps(c, 10_000, 5e6, BatchSchedule(train_gpt, c))
    assert horizon(dataclasses.replace(config, steps=7)) == 7
    assert horizon(dataclasses.replace(config, tokens_per_param=8)) == 80
    assert horizon(dataclasses.replace(config, flops_budget=1.2e11)) == 24
    with pytest.raises(ConfigError, match="no horizon"):
        horizon(config)


@pytest.mark.baseline
def test_lr_schedule_of_a_short_run_whose_warm_up_and_warm_down_overlap_never_jumps():
    config = Config(warmup_steps=40, warmdown_frac=0.65, final_lr_frac=0.05)  # warm-down from step 21 of 60
    lr = [train_gpt.lr_multiplier(s, 60, config) for s in range(60)]
    peak = lr.index(max(lr))
    assert lr[:peak + 1] == [(s + 1) / 40 for s in range(peak + 1)] and 21 < peak < 39  # the warm-up, while lower
    assert all(a > b for a, b in zip(lr[peak:], lr[peak + 1:]))  # then the warm-down line, down to the end
    assert max(abs(a - b) for a, b in zip(lr, lr[1:])) <= 1 / 40 + 1e-12  # never a jump (was 0.46 at step 40)
    assert lr[-1] == pytest.approx(1 / 39 + 38 / 39 * 0.05)


@pytest.mark.baseline
def test_lr_schedule_warms_up_holds_and_warms_down():
    config = Config(warmup_steps=10, warmdown_frac=0.5, final_lr_frac=0.1)
    lr = [train_gpt.lr_multiplier(s, 100, config) for s in range(101)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0 and lr[49] == 1.0
    assert lr[50] == 1.0 and lr[75] == pytest.approx(0.55) and lr[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


@pytest.mark.baseline
def test_muon_orthogonalizes():
    G = torch.randn(64, 32)
    X = train_gpt.orthogonalize(G, steps=5).float()
    singular = torch.linalg.svdvals(X)
    assert singular.min() > 0.5 and singular.max() < 1.3  # Newton-Schulz pushes every singular value near 1


# -----------------------------------------------------------------------------
# Bad input: one line that says what to do, before any work


@pytest.mark.parametrize("changes, message", [
    (dict(total_batch_tokens=300), "is not a multiple of world size x device_batch x seq_len"),
    (dict(train_files="/nowhere/train_*.bin"), "no training shards match"),
    (dict(val_files="/nowhere/val_*.bin"), "no validation shards match"),
    (dict(tokenizer="/nowhere"), "train a tokenizer"),
    (dict(steps=0), "no horizon"),
    (dict(val_tokens=10), "less than one row"),
    (dict(val_tokens=10**9), "fewer than --val_tokens"),
    (dict(window_pattern="SX"), "use only S"),
    (dict(model_dim=40), "--head_dim=16: the head dim must be even"),
    (dict(resume="/nowhere/checkpoint.pt"), "no such checkpoint"),
    (dict(bogus=1), "unknown option --bogus"),
    (dict(steps="many"), "--steps=many: not a valid int"),
    (dict(preset="huge"), "unknown preset"),
])
def test_bad_input_fails_with_a_message(options, changes, message, tmp_path):
    with pytest.raises(SystemExit, match=re.escape(message) if "(" not in message else message) as exc:
        main(argv(options, **changes))
    assert str(exc.value.code).startswith("error: ") and "\n" not in str(exc.value.code)
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_shards_from_another_tokenizer_are_refused(options, corpus, tmp_path):
    from data.tokenizer import main as tokenizer_main
    tokenizer_main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "other"), "--vocab-size", "300"])
    with pytest.raises(SystemExit, match="tokenized with another tokenizer"):
        main(argv(options, tokenizer=tmp_path / "other"))
    for prefix in ("train", "val"):  # llm.c shards record no tokenizer: the token ids are checked instead
        copy_shards(Path(options["train_files"]).parent, tmp_path / "plain", prefix, keep_identity=False)
    with pytest.raises(SystemExit, match="outside the tokenizer's vocab of 300"):
        main(argv(options, tokenizer=tmp_path / "other", train_files=f"{tmp_path}/plain/train_*.bin",
                  val_files=f"{tmp_path}/plain/val_*.bin"))


def test_presets_and_overrides():
    config = config_of("--preset=tiny", "--steps=3", "--value_embeds=false", "--adam_betas=0.9,0.99")
    assert (config.depth, config.steps, config.value_embeds, config.adam_betas) == (2, 3, False, (0.9, 0.99))
    assert train_gpt.derived(Config(depth=20))[:2] == (1280, 10)  # 64 x 20, heads of 128
    assert train_gpt.derived(Config(depth=9, head_dim=128))[0] == 640  # 576 rounded up to a multiple of 128


@pytest.mark.baseline  # exactly the baseline's graphs (any recipe: the test below)
def test_compiled_model_trains_like_the_eager_one(options):
    """torch.compile (used on GPUs by default) on CPU: the same losses as eager, within float tolerance."""
    from torch._dynamo.utils import counters
    _, eager = run(options, run_id="eager", steps=3)
    counters.clear()
    _, compiled = run(options, run_id="compiled", steps=3, compile="true")
    for step, loss in losses(eager).items():
        assert losses(compiled)[step] == pytest.approx(loss, rel=1e-3)
    # one graph for training (compiled in the warm-up step, reused by every step after the reset), one for
    # evaluation, and one for Muon's Newton-Schulz (every stack: tall, wide, of one); no graph breaks, no recompiles
    assert counters["stats"]["unique_graphs"] == 3 and not counters["graph_break"], dict(counters)


def test_a_compiled_run_compiles_in_its_first_step_and_first_validation_only(options, monkeypatch):
    """No recompile during training: whatever the recipe compiles (the model, its update rules' compiled functions)
    is compiled in the first step and evaluation's graphs in the first validation; every step and validation after
    reuses them, and the losses are eager's. torch.compile runs with the aot_eager backend here: Dynamo's tracing
    and guards as on a GPU, without Inductor's code generation."""
    from torch._dynamo.testing import CompileCounterWithBackend
    _, eager = run(options, run_id="eager", val_every=2)
    graphs, real_compile = CompileCounterWithBackend("aot_eager"), torch.compile
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: real_compile(*args, **{**kwargs, "backend": graphs}))
    calls = []  # (what, graphs compiled before the call, and after it)

    def counted(what, real):
        def call(*args, **kwargs):
            before = graphs.frame_count
            out = real(*args, **kwargs)
            calls.append((what, before, graphs.frame_count))
            return out
        return call
    monkeypatch.setattr(harness.loop.Trainer, "step", counted("step", harness.loop.Trainer.step))
    monkeypatch.setattr(harness.loop, "evaluate", counted("validation", harness.loop.evaluate))
    torch._dynamo.reset()
    _, compiled = run(options, run_id="compiled", val_every=2, warmup_timing_steps=2, compile="true")
    steps, validations = ([c for c in calls if c[0] == what] for what in ("step", "validation"))
    assert len(steps) == 2 + 6 and len(validations) == 3
    assert steps[0][2] > steps[0][1] == 0  # compiling: the first step compiled something
    assert all(after == before for _, before, after in steps[1:] + validations[1:]), calls
    assert graphs.frame_count == calls[-1][2]  # and nothing compiled between the calls either
    for key in ("train_loss", "val_loss"):
        for step, loss in losses(eager, key).items():
            assert losses(compiled, key)[step] == pytest.approx(loss, rel=1e-4), (key, step)


def test_help_lists_every_option_and_preset(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "torchrun" in out and "gpt2-core" in out
    assert all(f"--{field.name}=" in out for field in dataclasses.fields(Config))
