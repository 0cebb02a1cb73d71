"""The benchmarks run and print their figures (speed is measured by them, not asserted by tests)."""

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bench.data
import bench.gpu
import bench.record
import bench.train
from tests.helpers import config_of

REPO = Path(__file__).resolve().parents[1]


def test_train_benchmark_prints_throughput_on_synthetic_tokens(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.train", "--synthetic", "--vocab=512", "--depth=2", "--model_dim=32",
                                      "--head_dim=16", "--seq_len=64", "--device_batch=2", "--total_batch_tokens=256",
                                      "--warmup=1", "--steps=2", "--no-record", "--loss=chunked", "--embed_dtype=bf16"])
    bench.train.main()
    out = capsys.readouterr().out
    assert "tok/s" in out and "median of 2" in out and "depth 2, width 32" in out
    assert "fp8 False, compile False, attention sdpa, loss chunked, embed_dtype bf16:" in out  # rows tell switches apart


def test_the_settings_named_are_the_non_default_switches_not_data_paths_or_learning_rates():
    from tests.helpers import config_of
    assert bench.train.settings(config_of()) == {}
    config = config_of("--reduce_dtype=bf16", "--doc_mask=true", "--muon_split_qkv=true", "--seed=3",
                       "--matrix_lr=0.1", "--train_files=x/*.bin", "--depth=4", "--fp8")
    assert bench.train.settings(config) == {"doc_mask": True, "muon_split_qkv": True, "reduce_dtype": "bf16"}


def test_data_benchmark_prints_both_figures(corpus, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.data", "--corpus", str(corpus), "--vocab-size", "300", "--repeats", "1",
                                      "--no-record"])
    bench.data.main()
    out = capsys.readouterr().out
    assert "tokenizer training (300 vocab" in out and "M chars/s" in out and "split pattern" in out


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory):
    """python -m bench.gpu --smoke on the CPU: every part in its own process, tiny shapes."""
    out = tmp_path_factory.mktemp("gpu_check")
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--out", str(out), "--smoke", "--device=cpu"],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    return out, done


def test_gpu_check_runs_every_part_and_writes_real_figures(gpu_check):
    out, done = gpu_check
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    names = [name for name, _, _ in bench.gpu.parts(argparse.Namespace(out=str(out), smoke=True, device="cpu"))]
    assert list(summary["parts"]) == names and len(names) == 11
    for name, entry in summary["parts"].items():
        assert entry["status"] == "ok", (name, entry)
        assert (out / entry["output"]).read_text().startswith("$ ")  # the part's own output, as it ran
    parts = {name: entry["figures"] for name, entry in summary["parts"].items()}
    assert parts["versions"]["torch"] == torch.__version__
    for name in ("train_small_bf16", "train_small_fp8", "train_core_bf16", "train_core_fp8", "profile_small",
                 "train_small_blocks"):
        assert parts[name]["fits"] and parts[name]["tokens_per_s"] > 0 and parts[name]["step_ms"] > 0, name
    assert parts["train_small_fp8"]["fp8"] and not parts["train_small_bf16"]["fp8"]
    assert parts["train_small_blocks"]["compiled"] == "blocks" and parts["train_small_bf16"]["compiled"] is False
    assert len(parts["profile_small"]["top_kernels"]) == 20 and (out / "profile_small.table.txt").exists()
    assert set(parts["sdpa_kernels"]["cases"]) == {"causal", "window_and_docs", "docs"}
    assert all(case["works"] and case["ms"]["default"] > 0 for case in parts["sdpa_kernels"]["cases"].values())
    assert parts["gpu_tests"]["skipped"] >= 5  # no CUDA here: every GPU test skips, none fails to import
    assert parts["core_eval"]["attention"]["sdpa"]["prompts_per_s"] > 0
    assert parts["smoke_test"]["line"].startswith("smoke test: OK: 1 x CPU")
    table = done.stdout[done.stdout.index("summary:"):]
    assert all(f"{name} " in table for name in names)


def test_gpu_check_figures_become_rows_of_results_md(gpu_check, tmp_path, monkeypatch, capsys):
    out, _ = gpu_check
    monkeypatch.setattr(bench.record, "RESULTS", str(tmp_path / "results.md"))
    monkeypatch.setattr(bench.record, "RAW", str(tmp_path / "raw"))
    bench.gpu.to_results(str(out))
    rows = [line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 11 and all(f"`python -m bench.gpu --out {out.name} --smoke`" in row for row in rows)
    assert any("gpu-train-small-bf16 | ok: " in row and "tok/s" in row for row in rows)
    raw = sorted((tmp_path / "raw").iterdir())
    assert len(raw) == 11 and all("summary entry:" in path.read_text() for path in raw)


def test_the_dry_run_is_compared_with_every_bf16_training_part_and_a_cpu_run_writes_no_calibration(gpu_check, tmp_path,
                                                                                                    capsys):
    import bench.calibrate
    out, _ = gpu_check
    calibration = tmp_path / "calibration.json"
    calibration.write_text((REPO / "bench" / "calibration.json").read_text())
    assert bench.calibrate.main([str(out), "--write", f"--calibration={calibration}"]) == 1
    printed = capsys.readouterr()
    assert [line.split(":")[0] for line in printed.out.splitlines()] == list(bench.calibrate.CALIBRATING)
    assert all("ms modelled (x" in line and "peak n/a measured (no GPU)" in line for line in printed.out.splitlines())
    assert "nothing written" in printed.err and calibration.read_text() == (REPO / "bench" / "calibration.json").read_text()


def test_a_written_calibration_makes_the_dry_run_reproduce_its_calibration_point(gpu_check, tmp_path, monkeypatch):
    """A GPU run's figures (here the CPU run's, said to be an H100's, with a peak memory): the factor written is
    measured / modelled, and the dry run of the calibrating config then models the measured step time."""
    import bench.calibrate
    from harness import dryrun
    out, _ = gpu_check
    summary = json.loads((out / "summary.json").read_text())
    summary["parts"] = {name: summary["parts"][name] for name in ("versions", "train_core_bf16")}
    summary["parts"]["versions"]["figures"]["gpu"], summary["smoke"] = "NVIDIA H100 80GB HBM3", False
    summary["parts"]["train_core_bf16"]["figures"]["peak_memory_gib"] = 1.5
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps(summary))
    calibration = tmp_path / "calibration.json"
    calibration.write_text((REPO / "bench" / "calibration.json").read_text())
    monkeypatch.setattr(dryrun, "CALIBRATION", str(calibration))
    assert bench.calibrate.main([str(tmp_path / "run"), "--write", f"--calibration={calibration}"]) == 0
    entry = json.loads(calibration.read_text())["H100"]
    assert entry["measured_by"].startswith("bench.calibrate of run") and entry["memory_ratio"] > 0
    config, vocab = bench.calibrate.part_config(summary["parts"]["train_core_bf16"]["command"])
    planned = dryrun.plan(bench.calibrate.train_gpt, dataclasses.replace(config, steps=1), vocab=vocab)
    measured = summary["parts"]["train_core_bf16"]["figures"]["step_ms"]
    assert 1000 * planned["step_s"][0] == pytest.approx(measured, rel=1e-3)  # the factor is rounded to 4 digits
    assert "calibrated x" in planned["calibration"] and "peak memory measured x" in planned["calibration"]


def test_published_figures_calibrate_the_dry_run_until_a_gpu_measures_it(tmp_path, monkeypatch, capsys):
    """--published: the factor is the published step (bf16, from the FP8 figure and FP8's gain) over the modelled
    one, labelled as such in the dry run; a GPU's measured entry is never replaced by it."""
    import bench.calibrate
    from harness import dryrun
    published = dict(bench.calibrate.PUBLISHED, preset="tiny", world=1, vocab=4096, fp8_tokens_per_s=1.17e6,
                     source="a test's figure")
    monkeypatch.setattr(bench.calibrate, "PUBLISHED", published)
    calibration = tmp_path / "calibration.json"
    calibration.write_text((REPO / "bench" / "calibration.json").read_text())
    monkeypatch.setattr(dryrun, "CALIBRATION", str(calibration))
    assert bench.calibrate.main(["--published", "--write", f"--calibration={calibration}"]) == 0
    entry = json.loads(calibration.read_text())["H100"]
    config = dataclasses.replace(config_of("--preset=tiny"), gpu="H100", world=1)
    modelled = 1000 * dryrun.plan(bench.calibrate.train_gpt, config, vocab=4096, calibrated=False)["step_s"][0]
    published_ms = 1000 * config.total_batch_tokens / 1e6  # 1.17 M tokens/s in FP8 is 1 M in bf16
    assert entry["published_step_ms"] == pytest.approx(published_ms, abs=0.05)
    assert entry["factor"] == pytest.approx(published_ms / modelled, rel=1e-3)
    assert entry["measured_by"] is None and entry["published_by"] == "a test's figure"
    planned = dryrun.plan(bench.calibrate.train_gpt, config, vocab=4096)
    assert planned["calibration"].startswith("calibrated on published figures x")
    assert 1000 * planned["step_s"][0] == pytest.approx(published_ms, rel=1e-3)
    table = json.loads(calibration.read_text())
    table["H100"] = {"factor": 1.3, "measured_by": "bench.calibrate of a GPU run"}
    calibration.write_text(json.dumps(table))
    assert bench.calibrate.main(["--published", "--write", f"--calibration={calibration}"]) == 1
    assert "which published figures do not replace" in capsys.readouterr().err
    assert json.loads(calibration.read_text())["H100"]["factor"] == 1.3


def test_gpu_sweep_measures_each_switch_against_a_baseline_of_the_same_call(tmp_path):
    """--sweep: the same machinery over train_gpt.py's speed switches; each part's figures name its switches."""
    names = [name for name, _, _ in bench.gpu.sweep_parts(argparse.Namespace(out=str(tmp_path), smoke=True,
                                                                               device="cpu"))]
    assert names[0] == "sweep_baseline" and {"sweep_lean", "sweep_loss_chunked", "sweep_embed_bf16"} <= set(names)
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--out", str(tmp_path), "--smoke", "--device=cpu",
                           "--sweep", "--parts=sweep_baseline,sweep_lean"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sweep"] and list(summary["parts"]) == ["sweep_baseline", "sweep_lean"]
    figures = {name: entry["figures"] for name, entry in summary["parts"].items()}
    assert figures["sweep_baseline"]["settings"] == {} and figures["sweep_baseline"]["tokens_per_s"] > 0
    assert figures["sweep_lean"]["settings"] == {"loss": "chunked", "embed_dtype": "bf16"}
    assert re.search(r"\nsweep_lean +ok .*tok/s.*loss=chunked; embed_dtype=bf16", done.stdout)


def test_recompiles_and_graph_breaks_are_counted_from_torch_logs_by_where_they_happen(tmp_path):
    """Dynamo's own log lines (this torch's format): a function that breaks its graph at a print, called with three
    shapes, is compiled three times (two recompiles of it and two of the code after the break), breaking each time."""
    script = tmp_path / "breaks.py"
    script.write_text("import torch\n\ndef f(x):\n    x = x * 2\n    print('break')\n    return x + 1\n\n"
                      "g = torch.compile(f, backend='eager')\n"
                      "g(torch.ones(3)); g(torch.ones(4)); g(torch.ones(5, 2))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, TORCH_LOGS=bench.gpu.TORCH_LOGS))
    events = bench.gpu.compile_events(done.stdout + done.stderr)
    assert events["recompiled"]["f (breaks.py:3)"] == 2 and events["recompiles"] == 4, events
    assert events["graph_breaks_at"] == {"breaks.py:5": 3} and events["graph_breaks"] == 3
    assert bench.gpu.compile_line(events).startswith("4 recompiles (f (breaks.py:3) x2, ")
    assert bench.gpu.compile_events("") == {"recompiles": 0, "recompiled": {}, "graph_breaks": 0,
                                            "graph_breaks_at": {}}


def test_a_part_that_hangs_or_fails_is_a_status_not_a_crash(tmp_path):
    hang = [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"]
    entry = bench.gpu.run_part("hang", 3, hang, str(tmp_path))
    assert entry["status"] == "timed out" and entry["seconds"] < 30
    assert "started" in (tmp_path / "hang.txt").read_text()
    fail = [sys.executable, "-c", "print('working'); raise ValueError('no such shape')"]
    entry = bench.gpu.run_part("fail", 30, fail, str(tmp_path))
    assert entry["status"] == "failed" and entry["error"] == "ValueError: no such shape"
    oom = [sys.executable, "-c", f"import json; json.dump({{'fits': False, 'error': 'CUDA out of memory'}}, "
           f"open({str(tmp_path / 'oom.json')!r}, 'w'))"]
    assert bench.gpu.run_part("oom", 30, oom, str(tmp_path))["status"] == "oom"


def test_gpu_check_with_no_budget_left_skips_every_part_and_still_prints_its_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.gpu", "--out", str(tmp_path), "--budget=0"])
    bench.gpu.main()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {entry["status"] for entry in summary["parts"].values()} == {"skipped"}
    assert re.search(r"\ntrain_small_bf16 +skipped ", capsys.readouterr().out)  # the table's row


def test_paired_runs_the_arms_in_turns_and_gives_the_ratio_of_their_step_times(monkeypatch):
    """bench.paired: A B, then B A, ...; the ratio is the geometric mean of the rounds' IDEA / BASE."""
    import bench.paired
    runs = []
    monkeypatch.setattr(bench.paired, "tree_for", lambda repo, out, arm, rev: arm)
    monkeypatch.setattr(bench.paired, "step_ms", lambda tree, arm, args, scratch: runs.append(arm) or
                        {"base": 10.0, "idea": 11.0}[arm] * (1 + 0.01 * len(runs)))
    monkeypatch.setattr(bench.paired.subprocess, "run", lambda *args, **kwargs: None)  # no worktree to remove
    times, ratio = bench.paired.paired("a", "b", ["--preset=tiny"], rounds=4, alpha=0.05, echo=lambda line: None)
    assert runs == ["base", "idea", "idea", "base"] * 2 and len(times["base"]) == len(times["idea"]) == 4
    expected = math.exp(statistics.mean(math.log(i / b) for b, i in zip(times["base"], times["idea"])))
    assert ratio["time_ratio"] == pytest.approx(expected) and ratio["time_low"] < ratio["time_ratio"] < ratio["time_high"]
