"""The recipe (train_gpt.py) through the harness, as the tests call it: a config from --key=value arguments, a whole
run, the command line, a trainer, a sharded optimizer, and FLOPs read off a model."""

import contextlib
import types

import torch

import train_gpt
from harness import loop
from harness.comm import Comm
from harness.config import parse_args
from harness.trace import trace


def config_of(*argv):
    """train_gpt's Config from command-line arguments (--key=value, --preset=NAME)."""
    return parse_args(train_gpt.Config, train_gpt.PRESETS, list(argv))


def train(config, rank=0, world=1, device=None):
    return loop.train(train_gpt, config, rank, world, device)


def main(argv=None):
    return loop.main(train_gpt, argv)


def check_config(config, world=1, device=None):
    return loop.check_config(train_gpt, config, world, device)


def trainer(config, tokenizer, rank=0, world=1, device=torch.device("cpu")):
    return loop.Trainer(train_gpt, config, tokenizer, rank, world, device)


def build_optimizer(model, config, comm=None, accum_steps=1, compile=False):
    return loop.build_optimizer(train_gpt, model, config, comm or Comm(), accum_steps, compile)


def traced_flops_per_token(config, vocab_size):
    """harness.trace's FLOPs per token of the recipe's model, built on the meta device (no memory: any size)."""
    with torch.device("meta"):
        model = train_gpt.GPT(config, vocab_size)
    return trace(model, config.seq_len)[0]


def recipe_step(forward, optimizer, config, inputs, targets, step=0, num_steps=1):
    """One step of the recipe's own train_step on this batch (its schedule, micro-steps and optimizer call), for a
    test that holds its own model (`forward`) and optimizer: a stand-in trainer with what train_step reads."""
    loader = types.SimpleNamespace(next_batch=lambda: (inputs, targets))
    trainer = types.SimpleNamespace(
        config=config, device=inputs.device, optimizer=optimizer, forward=forward, model=forward, loader=loader,
        accum_steps=len(inputs) // config.device_batch, autocast=contextlib.nullcontext(),
        mean_over_processes=lambda total: total, rank=0, world=1)
    return train_gpt.train_step(trainer, step, num_steps)
