"""The benchmarks run and print their figures (speed is measured by them, not asserted by tests)."""

import sys


import bench.data
import bench.train


def test_train_benchmark_prints_throughput_on_synthetic_tokens(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.train", "--synthetic", "--vocab=512", "--depth=2", "--model_dim=32",
                                      "--head_dim=16", "--seq_len=64", "--device_batch=2", "--total_batch_tokens=256",
                                      "--warmup=1", "--steps=2", "--no-record"])
    bench.train.main()
    out = capsys.readouterr().out
    assert "tok/s" in out and "median of 2" in out and "depth 2, width 32" in out


def test_data_benchmark_prints_both_figures(corpus, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench.data", "--corpus", str(corpus), "--vocab-size", "300", "--repeats", "1",
                                      "--no-record"])
    bench.data.main()
    out = capsys.readouterr().out
    assert "tokenizer training (300 vocab" in out and "M chars/s" in out and "split pattern" in out
