"""The smoke test (harness/smoke.py, `python -m harness.smoke`): the run's real Trainer stepped on random tokens, one
line on success and one `cannot start` line on failure; no data read, nothing written. And speedrun.sh on a GPU
node: the smoke test runs while the data downloads, and a run that cannot start stops the pipeline before the
tokens are made."""

import json
import os
import subprocess

import pytest
import torch

import harness.loop
import train_gpt
from harness import smoke
from tests.helpers import config_of
from tests.test_resume import copy_repo, speedrun_env

# the tiny preset's shape, smaller; data paths that do not exist: the smoke test reads no shard
OPTIONS = ("--preset=tiny", "--depth=2", "--model_dim=32", "--head_dim=16", "--seq_len=64", "--short_window=16",
           "--device_batch=2", "--total_batch_tokens=256", "--val_tokens=2048", "--train_files=/nowhere/train_*.bin",
           "--val_files=/nowhere/val_*.bin", "--smoke_steps=2")


@pytest.fixture
def tokenizer(tmp_path):
    """A tokenizer folder with only tokenizer.json: all the smoke test reads of it."""
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps({"vocab_size": 300, "bos_token": "<|bos|>",
                                                       "special_tokens": {"<|bos|>": 299}}))
    return f"--tokenizer={folder}"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """Run in an empty folder: anything written (runs/, a checkpoint) would show there."""
    monkeypatch.chdir(tmp_path)


def cannot_start(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        smoke.main(train_gpt, list(argv))
    line = str(exc.value.code)
    assert line.startswith("smoke test: cannot start: ") and "\n" not in line, line
    return line


def test_the_tiny_preset_steps_on_random_tokens_and_says_ok_in_one_line(tmp_path, capsys, tokenizer):
    smoke.main(train_gpt, [*OPTIONS, tokenizer])
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("smoke test: OK: 1 x CPU, eager, vocab 300: first 2 steps "), out
    assert "2 timed steps " in out and " tokens/s (" in out and out.endswith("; peak memory n/a (CPU)\n")
    assert os.listdir(tmp_path) == ["tokenizer"]  # no runs/, no checkpoint


def test_without_a_tokenizer_the_vocab_is_smoke_vocab_or_the_presets(capsys):
    smoke.main(train_gpt, [*OPTIONS, "--tokenizer=/nowhere", "--smoke_vocab=400"])
    assert ", vocab 400: " in capsys.readouterr().out
    assert smoke.vocabulary(train_gpt.Config(preset="gpt2-core", tokenizer="/nowhere"), 0)["vocab_size"] == 32768
    line = cannot_start(capsys, *OPTIONS, "--tokenizer=/nowhere")
    assert line.endswith("/nowhere/tokenizer.json is missing and --preset=tiny has no known vocab (gpt2-core, "
                         "gpt2-small-fineweb do); give a --tokenizer folder or --smoke_vocab=N")


@pytest.mark.parametrize("argv, message", [
    (("--device_batch=3",), "--total_batch_tokens=256 is not a multiple of world size x device_batch x seq_len"),
    (("--depth=0",), "--depth=0: must be at least 1"),
    (("--steps=0", "--tokens_per_param=0"), "no horizon: set one of --steps, --tokens_per_param or --flops_budget"),
    (("--smoke_steps=0",), "--smoke_steps=0: time at least 1 step"),
    (("--bogus=1",), "unknown option --bogus"),
])
def test_a_bad_option_is_one_cannot_start_line(capsys, tokenizer, argv, message):
    assert message in cannot_start(capsys, *OPTIONS, tokenizer, *argv)


def test_out_of_memory_says_to_lower_the_device_batch_with_the_dry_runs_value(capsys, tokenizer, monkeypatch):
    def out_of_memory(trainer, step, num_steps):  # what the CUDA allocator raises in a step too large for the GPU
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 6.14 GiB. GPU 0 has a total capacity of "
                                     "79.19 GiB of which 2.03 GiB is free.")
    monkeypatch.setattr(harness.loop.Trainer, "step", out_of_memory)  # not train_step: the dry run steps it too
    line = cannot_start(capsys, *OPTIONS, tokenizer)
    assert "out of GPU memory (Tried to allocate 6.14 GiB; peak allocated " in line
    assert "at --device_batch=2 (--val_batch=2 in evaluation): lower --device_batch to a divisor of it" in line
    # the dry run models this tiny batch as fitting an H100 (the OOM is simulated): the next smaller one is advised
    assert line.endswith("; the dry run modelled this batch as fitting an H100: try --device_batch=1"), line


def test_out_of_memory_inside_a_compile_error_is_still_out_of_memory(capsys, tokenizer, monkeypatch):
    def compile_fails(trainer, step, num_steps):
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB.")
        except torch.OutOfMemoryError as e:
            raise RuntimeError("backend compiler failed") from e
    monkeypatch.setattr(train_gpt, "train_step", compile_fails)
    assert "out of GPU memory (Tried to allocate 1.00 GiB; " in cannot_start(capsys, *OPTIONS, tokenizer)


def test_any_other_error_names_the_stage_with_what_to_do_after_its_traceback(capsys, tokenizer, monkeypatch):
    def compile_fails(trainer, step, num_steps):
        raise RuntimeError("Inductor: no C++ compiler\nmore detail")
    monkeypatch.setattr(train_gpt, "train_step", compile_fails)
    line = cannot_start(capsys, *OPTIONS, tokenizer)
    assert line == ("smoke test: cannot start: the first steps (compile) failed (RuntimeError: Inductor: no C++ "
                    "compiler); --compile=false tells a compile error from the model's")
    assert "Traceback" in capsys.readouterr().err


def test_compiled_it_compiles_in_the_first_steps(capsys, tokenizer, monkeypatch):
    """--compile=true on the CPU, with the aot_eager backend (Dynamo's tracing without Inductor's code generation):
    the compile happens in the untimed first steps, and nothing compiles again in the timed ones."""
    from torch._dynamo.testing import CompileCounterWithBackend
    graphs, real_compile = CompileCounterWithBackend("aot_eager"), torch.compile
    monkeypatch.setattr(torch, "compile", lambda *args, **kwargs: real_compile(*args, **{**kwargs, "backend": graphs}))
    compiled_by_step = []
    real_run_steps = smoke.run_steps
    monkeypatch.setattr(smoke, "run_steps", lambda *args: (real_run_steps(*args),
                                                           compiled_by_step.append(graphs.frame_count)))
    torch._dynamo.reset()
    smoke.main(train_gpt, [*OPTIONS, tokenizer, "--compile=true"])
    assert capsys.readouterr().out.startswith("smoke test: OK: 1 x CPU, compiled, vocab 300: first 2 steps (compile, ")
    first, timed = compiled_by_step
    assert first > 0 and timed == first, compiled_by_step


def test_the_trainer_is_the_training_one_with_random_rows(tokenizer):
    config = config_of(*OPTIONS[:-1], tokenizer)  # less --smoke_steps, which is the smoke test's own
    trainer = smoke.SmokeTrainer(train_gpt, config, {"vocab_size": 300, "bos_id": 0}, 0, 1, torch.device("cpu"))
    inputs, targets = trainer.loader.next_batch()
    assert inputs.shape == targets.shape == (config.total_batch_tokens // config.seq_len, config.seq_len)
    assert inputs.dtype == torch.long and int(inputs.max()) < 300 and torch.equal(inputs[:, 1:], targets[:, :-1])


# -----------------------------------------------------------------------------
# speedrun.sh on a GPU node (NUM_GPUS=1 here): torchrun is a stand-in that runs the smoke test on the CPU, and
# stops at training (which these tests do not reach on a real GPU)

TORCHRUN = """#!/bin/sh
# torchrun's stand-in: its own options dropped; the smoke test runs, training is only announced
while [ "${1#--}" != "$1" ]; do shift; done
if [ -n "${TORCHRUN_DIES:-}" ]; then echo "$TORCHRUN_DIES"; exit 9; fi  # before any worker says a word
case " $* " in *" --fp8=true "*) if [ -n "${FP8_FAILS:-}" ]; then echo "smoke test: cannot start: $FP8_FAILS"; exit 1; fi;; esac
if [ "$1 $2" = "-m harness.smoke" ]; then shift 2; exec "$(dirname "$0")/python" -m harness.smoke "$@"; fi
echo "torchrun: training would start: $*"
exit 3
"""


def gpu_speedrun(tmp_path, corpus, train_args, **env):
    repo = copy_repo(tmp_path / "repo")
    torchrun = repo / ".venv" / "bin" / "torchrun"
    torchrun.write_text(TORCHRUN)
    torchrun.chmod(0o755)
    env = {**speedrun_env(corpus), "NUM_GPUS": "1", "PRESET": "tiny", "TRAIN_ARGS": train_args, **env}
    return repo, subprocess.run(["bash", "speedrun.sh"], cwd=repo, env=env, capture_output=True, text=True,
                                timeout=300)


def test_speedrun_on_gpus_prints_the_smoke_tests_line_before_tokenizing(tmp_path, corpus):
    from tests.test_resume import TINY
    repo, done = gpu_speedrun(tmp_path, corpus, TINY)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    ok = next(i for i, line in enumerate(lines) if line.startswith("smoke test: OK: 1 x CPU, eager, vocab 512: "))
    assert ok < next(i for i, line in enumerate(lines) if line.startswith("== tokenize:"))
    assert "torchrun: training would start: train_gpt.py --preset=tiny" in done.stdout
    assert (repo / "runs" / "smoke.log").read_text().startswith("smoke test: OK")
    # FP8 by default on GPUs, as nanochat's speedrun, where the smoke test passes with it
    assert "FP8: on (--fp8=true: the smoke test passed with it)" in lines
    assert done.stdout.rstrip().splitlines()[-1].endswith("--fp8=true")


def test_speedrun_trains_in_bf16_and_says_so_in_one_line_when_fp8_fails_the_smoke_test(tmp_path, corpus):
    from tests.test_resume import TINY
    repo, done = gpu_speedrun(tmp_path, corpus, TINY, FP8_FAILS="no FP8 kernel for this GPU")
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("FP8: the smoke test failed with --fp8=true (cannot start: no FP8 kernel for this GPU; "
            "runs/smoke_fp8.log) and passed without; training in bf16") in done.stdout.splitlines()
    training = next(line for line in done.stdout.splitlines() if line.startswith("torchrun: training would start"))
    assert "--fp8" not in training and (repo / "runs" / "smoke.log").read_text().startswith("smoke test: OK")


def test_speedrun_on_gpus_stops_with_the_one_line_when_the_run_cannot_start(tmp_path, corpus):
    from tests.test_resume import TINY
    repo, done = gpu_speedrun(tmp_path, corpus, TINY + " --device_batch=3")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.endswith("smoke test: cannot start: --total_batch_tokens=256 is not a multiple of world size x "
                                "device_batch x seq_len = 1 x 3 x 64 = 192; change one of them (the global batch is "
                                "kept by gradient accumulation)\n"), done.stderr
    assert "== tokenize:" not in done.stdout and not list((repo / "data").glob("tokens/*"))


def test_speedrun_on_gpus_stops_with_one_line_when_the_smoke_test_dies_without_its_line(tmp_path, corpus):
    from tests.test_resume import TINY
    _, done = gpu_speedrun(tmp_path, corpus, TINY, TORCHRUN_DIES="torch.distributed.elastic: rendezvous failed")
    assert done.returncode == 1 and "== tokenize:" not in done.stdout
    assert done.stderr.endswith("smoke test: cannot start: it stopped without saying why (its log's last line: "
                                "torch.distributed.elastic: rendezvous failed); see runs/smoke.log\n"), done.stderr
