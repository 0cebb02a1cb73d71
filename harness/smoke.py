"""harness/smoke.py: a few real training steps on random tokens at the real shape, to learn in minutes whether a
run can start, before the long wait for its data.

    python -m harness.smoke [--recipe=train_gpt.py] --preset=gpt2-core [its options] [--smoke_steps=3] [--smoke_vocab=N]
    torchrun --standalone --nproc_per_node=8 -m harness.smoke --preset=gpt2-core [options]

It builds what training builds by the same code (harness.loop's checks and Trainer: the devices and processes, the
model, the sharded optimizer, the compile), then runs WARM_STEPS steps (the compile), --smoke_steps timed steps and
one validation batch per process, on random token rows instead of the shards: no data is read and nothing is written
(no run folder, no checkpoint, no wandb). The vocab is the tokenizer's (tokenizer.json) when it is made, else
--smoke_vocab, else the preset's known one (the dry run's). speedrun.sh runs it on GPU nodes while the data downloads.

Success is one line on stdout:
    smoke test: OK: 8 x NVIDIA H100 80GB HBM3, compiled: first 2 steps (compile, warm-up) 95.2 s; 3 timed steps ...
Failure is one line on stderr (after any traceback) and exit status 1:
    smoke test: cannot start: <reason>; <what to do>
"""

import dataclasses
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

from data.shards import ShardError
from harness.config import ConfigError, parse_args
from harness.device import init_distributed, out_of_memory, synchronize, wants_compile
from harness.dryrun import compatible_batches, plan, vocab_of
from harness.evaluate import evaluate
from harness.loop import Trainer, check_config, num_training_steps

WARM_STEPS = 2  # the first step compiles (the model, the update rules); the second runs the compiled code once
SMOKE_STEPS = 3  # timed, after the warm steps
PREFIX = "smoke test"


class CannotStart(Exception):
    """Why the run cannot start and what to do, as the one line says it."""


class RandomRows:
    """The DataLoader's stand-in: this process's rows of a step, random token ids of the real shape, made on the
    device (no file is read)."""

    def __init__(self, rows, seq_len, vocab_size, device, seed):
        self.shape, self.vocab_size, self.device = (rows, seq_len + 1), vocab_size, device
        self.generator = torch.Generator(device).manual_seed(seed)

    def next_batch(self):
        rows = torch.randint(self.vocab_size, self.shape, generator=self.generator, device=self.device)
        return rows[:, :-1], rows[:, 1:]

    def close(self):
        pass


class SmokeTrainer(Trainer):
    """The training Trainer, fed random rows."""

    def make_loader(self, config, tokenizer, rows_per_step):
        return RandomRows(rows_per_step(0) // self.world, config.seq_len, tokenizer["vocab_size"], self.device,
                          config.seed + self.rank)


def smoke_options(argv):
    """(--smoke_steps, --smoke_vocab, the other arguments): the two are this tool's, the rest train_gpt.py's."""
    values, rest, args = {"smoke_steps": str(SMOKE_STEPS), "smoke_vocab": "0"}, [], list(argv)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.lstrip("-").replace("-", "_").partition("=")
        if arg.startswith("--") and key in values:
            values[key] = value if eq else args.pop(0) if args else ""
        else:
            rest.append(arg)
    numbers = {}
    for key, value in values.items():
        if not value.isdigit():
            raise ConfigError(f"--{key}={value}: give a whole number")
        numbers[key] = int(value)
    if numbers["smoke_steps"] < 1:
        raise ConfigError(f"--smoke_steps={numbers['smoke_steps']}: time at least 1 step")
    return numbers["smoke_steps"], numbers["smoke_vocab"], rest


def vocabulary(config, vocab):
    """What the Trainer needs of the tokenizer: its own when tokenizer.json is there, else --smoke_vocab (speedrun.sh
    trains the tokenizer while this runs), else the preset's known vocab (the dry run's rule)."""
    if vocab and not os.path.exists(os.path.join(config.tokenizer, "tokenizer.json")):
        return {"vocab_size": vocab, "bos_id": 0}
    try:
        size, bos_id, _ = vocab_of(config)
    except ConfigError as e:  # the dry run's words, which name the dry run
        raise ConfigError(f"{str(e).removeprefix('--dry_run: ')} or --smoke_vocab=N") from None
    return {"vocab_size": size, "bos_id": bos_id}


def stage(what, advice, fn, *args):
    """fn(*args); an unexpected error becomes CannotStart saying what failed (its traceback goes to stderr first).
    Errors with a line of their own (options, out of memory, also when a compile error wraps it) pass through."""
    try:
        return fn(*args)
    except (ConfigError, ShardError, CannotStart, torch.OutOfMemoryError):
        raise
    except Exception as error:
        cause = error
        while cause is not None and not isinstance(cause, torch.OutOfMemoryError):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from error
        traceback.print_exc()
        message = (str(error).strip().splitlines() or [""])[0][:300]
        raise CannotStart(f"{what} failed ({type(error).__name__}: {message}); {advice}") from error


def timed(device, fn):
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def run_steps(trainer, first, count, num_steps):
    for step in range(first, first + count):
        trainer.step(step, num_steps)


def validation_batch(trainer, vocab_size):
    """One batch of --val_batch rows per process through evaluation (its graph, its memory), on random tokens."""
    config = trainer.config
    rows = trainer.world * (config.val_batch or config.device_batch)
    tokens = torch.randint(vocab_size, (rows * config.seq_len + 1,), generator=torch.Generator().manual_seed(0))
    evaluate(trainer.forward, tokens, torch.ones(vocab_size, dtype=torch.long), config, trainer.rank, trainer.world,
             trainer.device, trainer.autocast)


def peak_memory(device, world):
    if device.type != "cuda":
        return "peak memory n/a (CPU)"
    peak = torch.tensor(float(torch.cuda.max_memory_allocated(device)), device=device)
    if world > 1:
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    total = torch.cuda.get_device_properties(device).total_memory
    busiest = ", the busiest GPU's" if world > 1 else ""
    return f"peak memory {peak.item() / 2**30:.1f} GiB of {total / 2**30:.1f} GiB ({peak.item() / total:.0%}{busiest})"


def smoke_test(recipe, config, steps, vocab):
    """Builds and steps the run that `config` describes; returns the summary line."""
    rank, world, device = stage("joining the processes", "check that every GPU works (nvidia-smi) and that the "
                                "process count matches them; NCCL_DEBUG=INFO says more", init_distributed, config)
    check_config(recipe, config, world, device)
    tokenizer = vocabulary(config, vocab)
    trainer = stage("building the model and optimizer", "the dry run (train_gpt.py --dry_run, same options) builds "
                    "them on the meta device", SmokeTrainer, recipe, config, tokenizer, rank, world, device)
    num_steps = num_training_steps(config, trainer.optimizer.counted_params, trainer.flops_per_token,
                                   trainer.schedule)
    warm = stage("the first steps (compile)", "--compile=false tells a compile error from the model's",
                 timed, device, lambda: run_steps(trainer, 0, WARM_STEPS, num_steps))
    step_s = stage("the timed steps", "see the traceback above", timed, device,
                   lambda: run_steps(trainer, WARM_STEPS, steps, num_steps)) / steps
    val_s = stage("a validation batch", "see the traceback above (--val_batch sets its rows)", timed, device,
                  lambda: validation_batch(trainer, tokenizer["vocab_size"]))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    compiled = wants_compile(config, device)
    return (f"{PREFIX}: OK: {world} x {name}, {'compiled' if compiled else 'eager'}, vocab {tokenizer['vocab_size']:,}: "
            f"first {WARM_STEPS} steps ({'compile, ' if compiled else ''}warm-up) {warm:.1f} s; {steps} timed "
            f"steps {trainer.schedule(0) / step_s:,.0f} tokens/s ({1000 * step_s:.0f} ms a step of "
            f"{trainer.schedule(0):,} tokens); a validation batch {val_s:.1f} s; {peak_memory(device, world)}")


def gpu_kind(config):
    """The dry run's GPU for this one (speedrun.sh's rule: H200 and A100 by name, else H100); off CUDA, --gpu."""
    if not torch.cuda.is_available():
        return config.gpu
    name = torch.cuda.get_device_name()
    return next((kind for kind in ("H200", "A100") if kind in name), "H100")


def batch_advice(recipe, config, world):
    """The dry run's --device_batch for this GPU, as a clause of the out-of-memory line ('' when it cannot say)."""
    gpu = gpu_kind(config)
    try:
        largest = plan(recipe, dataclasses.replace(config, gpu=gpu, world=world))["largest_batch"]
    except Exception:  # advice only: the line stands without it
        return ""
    if largest and largest < config.device_batch:
        return f"; the dry run's largest that fits an {gpu} at world {world} is --device_batch={largest}"
    smaller = [d for d in compatible_batches(config, world) if d < config.device_batch]
    if not smaller:
        return ""
    return f"; the dry run modelled this batch as fitting an {gpu}: try --device_batch={max(smaller)}"


def main(recipe, argv=None):
    """The command line: the summary line, or the one line of why not and exit status 1."""
    argv = sys.argv[1:] if argv is None else argv
    world = int(os.environ.get("WORLD_SIZE", 1))
    # any rank may be the one that fails at run time (the others then wait until torchrun stops them); an option's
    # error is every rank's
    where = f"rank {os.environ.get('RANK', 0)}: " if world > 1 else ""
    try:
        steps, vocab, rest = smoke_options(argv)
        config = parse_args(recipe.Config, recipe.PRESETS, rest, __doc__)
        line = smoke_test(recipe, config, steps, vocab)
        if int(os.environ.get("RANK", 0)) == 0:
            print(line, flush=True)
    except (ConfigError, ShardError) as e:
        sys.exit(f"{PREFIX}: cannot start: {e}")
    except CannotStart as e:
        sys.exit(f"{PREFIX}: cannot start: {where}{e}")
    except torch.OutOfMemoryError as e:
        sys.exit(f"{PREFIX}: cannot start: {where}{out_of_memory(config, e)}{batch_advice(recipe, config, world)}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def load_recipe(path):
    """The recipe script at path, loaded as a module: the harness is handed its recipe (as harness.loop.main is),
    it never imports one by name."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
    if spec is None or not os.path.isfile(path):
        sys.exit(f"{PREFIX}: cannot start: no recipe script at {path}; give --recipe=PATH (default train_gpt.py)")
    recipe = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = recipe  # dataclasses and pickling look the module up by name
    spec.loader.exec_module(recipe)
    return recipe


if __name__ == "__main__":  # --recipe=PATH first (default: train_gpt.py, the recipe speedrun.sh trains)
    given = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1].startswith("--recipe=") else None
    main(load_recipe(given.split("=", 1)[1] if given else "train_gpt.py"), sys.argv[2 if given else 1:])
