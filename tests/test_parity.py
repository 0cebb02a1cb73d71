"""bench/parity.py's own pieces, without nanochat (the bench itself needs a checkout of it; bench/results.md has its
figures): what it reads of a training script, the checkout it refuses, its batches."""

import math

import pytest
import torch

import bench.parity as parity

SCRIPT = '''
import argparse
parser = argparse.ArgumentParser()
parser.add_argument("--matrix-lr", type=float, default=0.02, help="a test script of our own")
parser.add_argument("--warmdown-ratio", type=float, default=0.65)
parser.add_argument("--run", type=str, default="dummy")
parser.add_argument("--total-batch-size", type=int, default=-1)

def get_lr_multiplier(it):
    return 1.0 if it < args.warmup_steps else 0.5

def get_muon_momentum(it):
    return 0.9

def get_weight_decay(it):
    return weight_decay_scaled * math.cos(it / num_iterations)

raise SystemExit("the script's top level never runs")
'''


def checkout(tmp_path, script=SCRIPT):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "nanochat").mkdir()
    (tmp_path / "scripts" / "base_train.py").write_text(script)
    (tmp_path / "nanochat" / "gpt.py").write_text("")
    return tmp_path


def test_the_scripts_defaults_and_schedule_functions_are_read_without_running_it(tmp_path):
    path = checkout(tmp_path)
    assert parity.script_defaults(path) == {"matrix_lr": 0.02, "warmdown_ratio": 0.65, "run": "dummy",
                                            "total_batch_size": -1}
    namespace = dict(math=math, num_iterations=10, weight_decay_scaled=2.0,
                     args=type("Args", (), {"warmup_steps": 3}))
    lr, momentum, decay = parity.script_schedules(path, namespace)
    assert (lr(0), lr(5), momentum(7), decay(0)) == (1.0, 0.5, 0.9, 2.0)


def test_a_script_without_the_schedules_or_a_folder_that_is_no_checkout_is_refused(tmp_path):
    path = checkout(tmp_path, SCRIPT.replace("def get_muon_momentum", "def renamed"))
    with pytest.raises(SystemExit, match="lacks \\['get_muon_momentum'\\]"):
        parity.script_schedules(path, {})
    with pytest.raises(SystemExit, match="not a nanochat checkout"):
        parity.reference_modules(tmp_path / "elsewhere")


def test_the_batches_are_the_same_every_time_and_follow_their_chain():
    first, again = parity.batches(2), parity.batches(2)
    assert len(first) == 3 and all(torch.equal(a, b) for a, b in zip(first, again))
    rows = first[0]
    assert rows.shape == (parity.ROWS, parity.SHAPE["seq_len"] + 1) and int(rows.max()) < parity.VOCAB
    partner = torch.randperm(parity.VOCAB, generator=torch.Generator().manual_seed(1234))  # the chain's own
    follows = (rows[:, 1:] == partner[rows[:, :-1]]).float().mean().item()
    assert 0.7 < follows < 0.8  # 3 in 4 tokens are their predecessor's partner, the rest uniform
