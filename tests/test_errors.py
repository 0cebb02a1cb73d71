"""Bad input, from train_gpt.py, the corpus reader, `python -m records new` and speedrun.sh: one line that says
what to do, a non-zero exit, before any run folder (or anything else) is made, and nothing a user has is lost."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from data.tokenize import main as tokenize_main
from data.tokenizer import main as tokenizer_main
import harness.loop
import train_gpt
from records.__main__ import main as records_main
from tests.helpers import check_config, main

REPO = Path(__file__).resolve().parents[1]
OPTIONS = dict(depth=2, model_dim=32, head_dim=16, seq_len=64, short_window=16, device_batch=2,
               total_batch_tokens=256, steps=3, warmup_steps=1, warmup_timing_steps=0, val_tokens=2048, val_every=0,
               run_id="run")


def argv(tmp_path, **changes):
    # the data paths need not exist: every error here comes before any data is read or any model is built
    options = dict(OPTIONS, train_files=f"{tmp_path}/none/train_*.bin", val_files=f"{tmp_path}/none/val_*.bin",
                   tokenizer=f"{tmp_path}/none", out_dir=str(tmp_path / "runs"), **changes)
    return [f"--{k}={v}" for k, v in options.items()]


def fails_with(command, message):
    with pytest.raises(SystemExit) as exc:
        command()
    text = str(exc.value.code)
    assert text.startswith("error: ") and "\n" not in text and message in text, text
    return text


@pytest.mark.parametrize("changes, message", [
    (dict(adam_betas="0.9"), "--adam_betas=0.9: give two values in [0, 1), e.g. --adam_betas=0.8,0.95"),
    (dict(adam_betas="0.9,0.95,0.99"), "give two values"),
    (dict(adam_betas="0.9,x"), "--adam_betas=0.9,x: not a valid list of comma-separated numbers"),
    (dict(device_batch=0), "--device_batch=0: must be at least 1"),
    (dict(device_batch=-2), "--device_batch=-2: must be at least 1"),
    (dict(seq_len=0), "--seq_len=0: must be at least 1"),
    (dict(head_dim=0), "--head_dim=0: must be at least 1"),
    (dict(depth=0), "--depth=0: must be at least 1"),
    (dict(depth=-1), "--depth=-1: must be at least 1"),
    (dict(log_every=0), "--log_every=0: must be at least 1"),
    (dict(val_every=-1), "--val_every=-1: must be 0 or more"),
    (dict(save_every=-5), "--save_every=-5: must be 0 or more"),
    (dict(steps="1e400"), "--steps=1e400: not a valid int"),
    (dict(device="tpu9"), "--device=tpu9: not a device"),
    (dict(compile="block"), "--compile=block: use auto, true, false or blocks"),
    (dict(reduce_dtype="fp16"), "--reduce_dtype=fp16: use fp32 or bf16"),
    (dict(fused_adam="yes"), "--fused_adam=yes: use auto, true or false"),
    (dict(wandb="on"), "--wandb=on: use online or offline"),
    (dict(seed=-1), "--seed=-1: must be 0 or more"),
    (dict(warmdown_frac=2), "--warmdown_frac=2.0: must be in [0, 1] (a fraction)"),
    (dict(final_lr_frac=-1), "--final_lr_frac=-1.0: must be in [0, 1] (a fraction)"),
    (dict(logit_cap=0), "--logit_cap=0.0: must be above 0"),
    (dict(head_dim=15, model_dim=30), "--model_dim=30, --head_dim=15: the head dim must be even"),
    (dict(head_dim=16, model_dim=40), "--model_dim=40, --head_dim=16: the head dim must be even (rotary pairs its "
                                      "channels) and divide the model dim"),
])
def test_bad_option_fails_with_one_line_before_any_run_folder(tmp_path, changes, message):
    fails_with(lambda: main(argv(tmp_path, **changes)), message)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("device, attention, compile, notice", [
    ("cuda", "flex", "false", True), ("cuda", "flex", "true", False), ("cuda", "flex", "auto", False),
    ("cuda", "sdpa", "false", False), ("cpu", "flex", "false", False)])
def test_eager_flex_attention_on_cuda_gets_a_one_line_notice_not_an_error(capsys, device, attention, compile, notice):
    check_config(train_gpt.Config(attention=attention, compile=compile), 1, torch.device(device))
    expected = ("notice: --attention=flex without --compile materializes every attention score (slow, memory-hungry); "
                "use --compile=true, or --attention=sdpa\n") if notice else ""
    assert capsys.readouterr().out == expected


def test_running_out_of_gpu_memory_says_which_options_need_less(tmp_path, monkeypatch):
    def out_of_memory(*args):  # what the CUDA allocator raises, anywhere in the run
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.14 GiB. GPU 0 has a total capacity of "
                                     "79.19 GiB of which 2.03 GiB is free.\nIf reserved but unallocated memory ...")
    monkeypatch.setattr(harness.loop, "train", out_of_memory)
    text = fails_with(lambda: main(argv(tmp_path, device_batch=4, val_batch=8)),
                      "out of GPU memory (Tried to allocate 6.14 GiB; peak allocated ")
    assert "at --device_batch=4 (--val_batch=8 in evaluation): lower --device_batch to a divisor of it" in text
    assert "--loss=chunked" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu_says_to_use_the_cpu(tmp_path):
    fails_with(lambda: main(argv(tmp_path, device="cuda")), "--device=cuda: no CUDA GPU is visible")
    assert not (tmp_path / "runs").exists()


def test_a_non_utf8_text_file_in_a_corpus_is_named_with_what_to_do(tmp_path, tokenizer_dir):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("plain text " * 50)
    (corpus / "b.txt").write_bytes("caf\u00e9 in latin-1 ".encode("latin-1") * 20)
    (corpus / "c.txt").write_text("validation text " * 50)
    expected = f"{corpus / 'b.txt'}: not UTF-8 text"
    text = fails_with(lambda: tokenizer_main(["train", "--corpus", str(corpus), "--out", str(tmp_path / "tok"),
                                              "--vocab-size", "300"]), expected)
    assert "convert it to UTF-8" in text and "or remove it" in text
    assert not (tmp_path / "tok").exists()
    fails_with(lambda: tokenize_main(["--corpus", str(corpus), "--tokenizer", str(tokenizer_dir), "--out",
                                      str(tmp_path / "tokens"), "--workers", "1"]), expected)


def test_records_new_that_fails_leaves_no_half_built_folder(tmp_path):
    """A target track's t-test needs 2 runs or more: with one, `records new` fails, and a later attempt is not
    blocked by a folder it left."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.txt").write_text("log\n")
    (run / "results.json").write_text(json.dumps({
        "run_id": "run", "seed": 0, "steps": 1, "tokens": 1, "vocab_size": 512, "training_time_s": 1.0,
        "val_loss": 3.0, "val_bpb": 1.0, "core": {"core": 0.3}, "model_flops": 1, "model_flops_per_token": 1,
        "mfu": None, "environment": {"world_size": 1, "gpu": None}, "git": {"commit": "a" * 40}}))
    out = tmp_path / "records" / "gpt2-core" / "record"
    assert records_main(["new", "--track", "gpt2-core", "--slug", "one", "--out", str(out), str(run)]) == 1
    assert not out.exists() and not (tmp_path / "records").exists()
    # on a budget track one run is enough: the record is built (this log is no real one, so it does not validate)
    out = tmp_path / "records" / "flops-1e18" / "record"
    records_main(["new", "--track", "flops-1e18", "--slug", "one", "--out", str(out), str(run)])
    assert (out / "results.json").exists() and (out / "logs" / "run.txt").read_text() == "log\n"
    assert os.listdir(out.parent) == ["record"]  # the folder it was built in is gone


# -----------------------------------------------------------------------------
# speedrun.sh: its flags are checked before anything is installed or downloaded


@pytest.mark.parametrize("flags, message", [
    (["--seeds"], "--seeds needs a value"),
    (["--seeds", "--track", "cpu-smoke"], "--seeds needs a value"),
    (["--seeds", "abc"], "--seeds abc: give the number of runs, a whole number of 1 or more"),
    (["--seeds", "0"], "--seeds 0: give the number of runs"),
    (["--seeds=-1"], "--seeds -1: give the number of runs"),
    (["--gpus", "abc"], "--gpus abc: give a number of GPUs (0: train on the CPU)"),
    (["--track", "nope"], "--track nope: not a track of records/tracks.json"),
    (["--dataset", "local"], "--dataset local needs --source DIR"),
    (["--dataset", "local", "--source", "/nowhere"], "--source /nowhere: no such folder"),
    (["--dataset", "wiki"], "--dataset wiki: use climbmix, fineweb-edu, shakespeare, or local"),
    (["--bogus", "1"], "unknown flag --bogus"),
    (["--source", "/tmp", "--dataset", "shakespeare"], "--source /tmp is for --dataset local, not --dataset shakespeare"),
    (["NUM_SHARDS=0"], "NUM_SHARDS=0: give a number of train shards, 1 or more"),
    (["TOKENIZER_SHARDS=x"], "TOKENIZER_SHARDS=x: give a number, 1 or more"),
])
def test_speedrun_flags_fail_with_one_line_before_any_stage(flags, message):
    env = {k: v for k, v in os.environ.items() if k not in ("SEEDS", "NUM_GPUS", "TRACK", "DATASET", "SOURCE")}
    settings = [flag for flag in flags if re.match(r"[A-Z_]+=", flag)]  # NAME=value: the environment's
    env.update(setting.split("=", 1) for setting in settings)
    flags = [flag for flag in flags if flag not in settings]
    done = subprocess.run(["bash", str(REPO / "speedrun.sh"), *flags], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode != 0 and done.stdout == ""  # no stage started
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_a_second_speedrun_in_the_same_checkout_is_refused_while_the_first_runs():
    import fcntl
    (REPO / "runs").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("SEEDS", "NUM_GPUS", "TRACK", "DATASET", "SOURCE")}
    with open(REPO / "runs" / "speedrun.lock", "w") as lock:  # what a running speedrun.sh holds
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = subprocess.run(["bash", str(REPO / "speedrun.sh"), "--gpus", "0"], capture_output=True, text=True,
                              env=env, timeout=30)
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr == ("error: another speedrun.sh is running in this checkout (it holds runs/speedrun.lock); "
                           "wait for it to end\n")
