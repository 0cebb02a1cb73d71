"""harness/loop.py: a whole run around a recipe's train_step: set-up, the log's header, warm-up, the timed loop
with its validations and checkpoints, and the results.

A recipe is a module (train_gpt.py) that defines Config and PRESETS, GPT(config, vocab_size, bos_id),
parameter_table(config, model) and UPDATE_RULES (harness/optim.py), train_step(trainer, step, num_steps) and,
optionally, check_config(config) and model_surgery(model, step, config, num_steps). main(recipe) is the one call it
makes.

model_surgery is called before every step (and, on a resume, for every step before the checkpoint's, so that the
model has the checkpoint's parameters before they are loaded). It returns None, or after changing the model's
parameters (untying the head from the embedding, replacing a module) {new parameter name: the name whose optimizer
state it starts from, or None for a fresh state}: the harness then rebuilds the sharded optimizer for the new
parameters (buckets, order, FLOPs count), carrying the state of every parameter that kept its name and of those the
mapping names. A change of the FLOPs per token is refused (the run's counts assume one).
"""

import dataclasses
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

from data.shards import ShardError
from harness.checkpoint import (CheckpointError, check_same_settings, check_saved_weights, copy_state, load_checkpoint,
                                save_checkpoint)
from harness.comm import Comm
from harness.config import ConfigError, check_batch, check_options, parse_args
from harness.data import (DataLoader, DocumentLoader, check_data_matches_tokenizer, load_tokenizer_info,
                          load_val_tokens)
from harness.device import (autocast_for, compile_by_block, compiler, enable_fp8, init_distributed, out_of_memory,
                            resolve_device, synchronize, wants_compile)
from harness.evaluate import evaluate
from harness.optim import ShardedOptimizer
from harness.runlog import (RESULTS_SCHEMA, RunLog, data_identity, environment, git_info, peak_flops, read_results,
                            write_results)
from harness.resources import Resources
from harness.schedule import BatchSchedule
from harness.trace import stage_flops_per_token, trace


class Trainer:
    """What one process trains with: the model, its sharded optimizer, its data and the (compiled) forward; the
    recipe's train_step drives them."""

    def __init__(self, recipe, config, tokenizer, rank, world, device):
        self.recipe, self.config, self.rank, self.world, self.device = recipe, config, rank, world, device
        torch.manual_seed(config.seed)
        self.model = recipe.GPT(config, tokenizer["vocab_size"], tokenizer["bos_id"]).to(device)
        self.schedule = BatchSchedule(recipe, config)  # tokens and stage per step (the recipe's, if any)
        self.vocab_size, self.bos_id, self.stage_key, self._stage_flops = tokenizer["vocab_size"], tokenizer["bos_id"], \
            BatchSchedule.key({}), {}
        self.accum_steps = self.accumulation(0)
        self.use_compile = use_compile = wants_compile(config, device)
        self.comm = Comm(rank, world)
        self.optimizer = build_optimizer(recipe, self.model, config, self.comm, self.accum_steps, use_compile)
        self.flops_per_token = self.optimizer.flops_per_token
        self.fp8 = config.fp8 and enable_fp8(self.model, device)
        self.loader = self.make_loader(config, tokenizer, lambda step: self.schedule(step) // self.schedule.seq_len(step))
        # one graph: its backward hands out every gradient at its end, so no gradient bucket's reduce-scatter
        # overlaps the backward (eager, they do; harness/comm.py). --compile=blocks: compile_by_block
        self.forward = torch.compile(self.model) if use_compile and config.compile != "blocks" else self.model
        if config.compile == "blocks":
            compile_by_block(self.model)
        self.model.attention_backend = ("flex" if config.attention == "auto" and use_compile and device.type == "cuda"
                                        else "sdpa" if config.attention == "auto" else config.attention)
        self.autocast = autocast_for(device)

    def accumulation(self, step):
        """Micro-steps of device_batch rows per process in step `step`."""
        return self.schedule(step) // (self.schedule.seq_len(step) * self.world * self.config.device_batch)

    def flops_per_token_at(self, step):
        """Model FLOPs per token of step `step`: its stage's shape (seq_len, whatever apply_stage sets) counted on a
        meta-device copy of the model; the model line's figure without a stage schedule."""
        stage = self.schedule.stage(step)
        key = BatchSchedule.key(stage)
        if not stage:
            return self.flops_per_token
        if key not in self._stage_flops:
            self._stage_flops[key] = stage_flops_per_token(self.recipe, self.config, self.vocab_size, stage, self.bos_id)
        return self._stage_flops[key]

    def make_loader(self, config, tokenizer, rows_per_step):
        """The training batches (rows_per_step: a function of the step): the token shards' (harness/smoke.py's
        trainer makes random rows instead)."""
        if getattr(config, "rows", "slices") == "documents":  # rows that start at BOS, documents packed best fit
            return DocumentLoader(config.train_files, config.seq_len, rows_per_step, self.rank, self.world,
                                  config.seed, self.device, tokenizer["vocab_size"], tokenizer["bos_id"],
                                  seq_len_of=self.schedule.seq_len, pool=getattr(config, "doc_pool", 256),
                                  crop=getattr(config, "doc_crop", "oldest"))
        return DataLoader(config.train_files, config.seq_len, rows_per_step, self.rank, self.world, config.seed,
                          self.device, tokenizer["vocab_size"])

    def step(self, step, num_steps):
        """One optimizer step (the recipe's train_step): the mean train loss (a tensor, not yet synced), the lr
        multiplier. The step's batch (the schedule's) sets its gradient accumulation, here and in the buckets."""
        stage = self.schedule.stage(step)
        if BatchSchedule.key(stage) != self.stage_key:  # a new stage: the recipe sets it on the model
            if hasattr(self.recipe, "apply_stage"):
                self.recipe.apply_stage(self.model, stage)
            self.stage_key = BatchSchedule.key(stage)
        accum = self.accumulation(step)
        if accum != self.accum_steps:
            self.accum_steps = accum
            for bucket in self.optimizer.buckets:
                bucket.accum_steps = accum
        return self.recipe.train_step(self, step, num_steps)

    def change_model(self, step, num_steps, carry=True):
        """The recipe's model_surgery before `step`: when it changed the parameters, the optimizer rebuilt for them,
        with their state carried as it says (carry=False: a resume, whose checkpoint brings the state). Returns the
        mapping, or None when nothing changed."""
        surgery = getattr(self.recipe, "model_surgery", None)
        mapping = surgery(self.model, step, self.config, num_steps) if surgery else None
        if mapping is None:
            return None
        full = self.optimizer.full_state_dict() if carry else None
        full = self.comm.broadcast_from_first(full) if carry else None
        if full is not None:
            for new, old in mapping.items():
                if old is not None:
                    full["state"][new] = {key: value.clone() for key, value in full["state"].get(old, {}).items()}
                else:
                    full["state"].pop(new, None)
        self.optimizer.release()
        self.model.to(self.device)
        flops = self.flops_per_token
        self.optimizer = build_optimizer(self.recipe, self.model, self.config, self.comm, self.accum_steps,
                                         self.use_compile)
        if self.optimizer.flops_per_token != flops:
            raise ConfigError(f"model_surgery before step {step} changed the FLOPs per token ({flops:,} -> "
                              f"{self.optimizer.flops_per_token:,}); the run's token and FLOPs counts assume one")
        if full is not None:
            self.optimizer.load_full_state_dict(full)
        return mapping

    def mean_over_processes(self, total):
        """The mean of a per-process tensor over processes (in place)."""
        if self.world > 1:
            self.comm.all_reduce(total)
            total /= self.world
        return total

    def snapshot(self):
        """A copy of everything a step changes, kept in CPU memory (the GPU's is for training)."""
        return copy_state({"model": self.model.state_dict(), "loader": self.loader.state_dict(),
                           "optimizer": self.optimizer.state_dict()})

    def restore(self, state):
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])


def build_optimizer(recipe, model, config, comm, accum_steps=1, compile=False):
    """The sharded optimizer of the recipe's parameter table and update rules, its buckets in the order the backward
    finishes them (read off the model before it is compiled; the FLOPs per token come with it)."""
    flops_per_token, ready_order = trace(model, config.seq_len)
    optimizer = ShardedOptimizer(model, recipe.parameter_table(config, model), recipe.UPDATE_RULES, config, comm,
                                 accum_steps, ready_order, compiler(compile))
    optimizer.flops_per_token = flops_per_token
    return optimizer


def num_training_steps(config, counted_params, flops_per_token, schedule):
    """The horizon in steps: --steps, or the most steps of the batch schedule within --tokens_per_param x the counted
    parameters (rounded down, as nanochat does; at least 1), or within --flops_budget."""
    if config.steps > 0:
        return config.steps
    if config.tokens_per_param > 0:
        return schedule.steps_for_tokens(int(config.tokens_per_param * counted_params))
    if config.flops_budget > 0:
        steps = schedule.steps_within(config.flops_budget, flops_per_token)
        if steps < 1:
            raise ConfigError(f"--flops_budget={config.flops_budget:.3g} is less than one step "
                              f"({flops_per_token * schedule(0):.3g} FLOPs)")
        return steps
    raise ConfigError("no horizon: set one of --steps, --tokens_per_param or --flops_budget")


def check_config(recipe, config, world, device=None):
    """Bad values and combinations, caught before any model or data is built (and before any run folder)."""
    check_options(config)
    if hasattr(recipe, "check_config"):
        recipe.check_config(config)
    if hasattr(recipe, "batch_tokens"):  # a schedule: its first step now, every step once the horizon is known
        BatchSchedule(recipe, config).check(world, 1)
    else:
        check_batch(config, world)
    if config.attention == "flex" and config.compile == "false" and device is not None and device.type == "cuda":
        print("notice: --attention=flex without --compile materializes every attention score (slow, memory-hungry); "
              "use --compile=true, or --attention=sdpa")


def run_folder(config):
    run_dir = os.path.dirname(os.path.abspath(config.resume)) if config.resume else os.path.join(
        config.out_dir, config.run_id or time.strftime("%Y%m%d_%H%M%S") + (f"_{config.preset}" if config.preset else ""))
    return run_dir, os.path.join(run_dir, "results.json"), os.path.join(run_dir, "checkpoint.pt")


def refuse_taken_folder(config, run_dir, checkpoint_path):
    if not config.resume and os.path.exists(os.path.join(run_dir, "log.txt")):
        raise ConfigError(f"{run_dir} holds a run already; choose another --run_id, or " + (
            f"continue it with --resume={checkpoint_path}" if os.path.exists(checkpoint_path) else
            "move that folder aside (it has no checkpoint to continue from) to start it again"))


def write_header(recipe, config, log, run_dir, trainer, tokenizer, val_tokens, fresh):
    """The log's header: the recipe's source (first start only), commit, command, config, environment, data."""
    (git, diff), env = git_info(), environment(trainer.device, trainer.world)
    diff_path = os.path.join(run_dir, "git.diff")
    if diff and trainer.rank == 0 and not os.path.exists(diff_path):  # the first start's; a resume keeps it
        with open(diff_path, "w") as f:
            f.write(diff)
    if fresh:
        with open(recipe.__file__) as f:
            log.write(f.read(), echo=False)
        log.write("=" * 100, echo=False)
    log.write(f"git: {json.dumps(git)}")
    log.write(f"command: {' '.join([sys.executable, *sys.argv])}")
    log.write(f"config: {json.dumps(dataclasses.asdict(config))}")
    log.write(f"environment: {json.dumps(env)}")
    if trainer.rank == 0:  # hashing every shard takes a while on big corpora; only the log's writer needs it
        data = data_identity(config, tokenizer, trainer.loader.files, val_tokens)
        log.write(f"data: {json.dumps(data)}")
        if data["val_overlap"] is None:
            log.write(f"note: no val/train overlap measured for these shards (records need it): python -m "
                      f"data.overlap --train '{config.train_files}' --val '{config.val_files}'")
    return git, env


def model_line(config, trainer, tokenizer, num_steps):
    """The model line; with a batch schedule, the steps' batches and their total ("N steps of A to B tokens, T in
    all"), with a constant batch "N steps of B tokens" (records/record.py parses both)."""
    model, schedule = trainer.model, trainer.schedule
    values = schedule.values(num_steps)
    batches = f"{num_steps} steps of {values[0]:,} tokens" if schedule.constant else \
        f"{num_steps} steps of {values[0]:,} to {values[-1]:,} tokens, {schedule.total(num_steps):,} in all"
    return (f"model: {sum(p.numel() for p in model.parameters()):,} parameters, "
            f"{trainer.optimizer.counted_params:,} counted for tokens_per_param; vocab {tokenizer['vocab_size']}; "
            f"{trainer.flops_per_token:,} FLOPs/token; {batches}; gradient accumulation {trainer.accum_steps}, world "
            f"size {trainer.world}; fp8 {trainer.fp8}; attention {model.attention_backend}")


def warm_up(trainer, config, progress, num_steps, log=None):
    """Compile and warm up on real steps, then put everything back: the timed run starts from a clean state. With a
    stage schedule, one more step at the first step of each later stage (its shapes, its batch), so that a compiled
    run compiles every stage here, untimed, and not in the timed loop; the graphs compiled are counted and logged."""
    from torch._dynamo.utils import counters
    warmup_start, graphs = time.perf_counter(), counters["stats"]["unique_graphs"]
    start_state = trainer.snapshot()
    first = progress["step"]
    steps = list(range(first, first + min(config.warmup_timing_steps, num_steps - first)))
    stages = trainer.schedule.stages(first, num_steps)
    if steps:
        steps += [step for step, _ in stages.values() if step not in steps]
    for step in steps:
        if trainer.loader.state.get("step", step) != step:  # a later stage: the loader serves that step's batch
            trainer.loader.load_state_dict({**trainer.loader.state_dict(), "step": step})
        trainer.step(step, num_steps)
    trainer.restore(start_state)
    synchronize(trainer.device)
    progress["warmup_time"] += time.perf_counter() - warmup_start
    progress["graphs_warmup"] = counters["stats"]["unique_graphs"] - graphs
    if log is not None and (trainer.use_compile or stages):
        log.write(f"compile: {progress['graphs_warmup']} graphs compiled in the warm-up ({len(steps)} steps"
                  f"{f', {len(stages)} stages' if stages else ''})")


def resume_from(checkpoint, trainer, progress, log, config):
    trainer.model.load_state_dict(checkpoint["model"])
    trainer.optimizer.load_full_state_dict(checkpoint["optimizer"])
    torch.set_rng_state(checkpoint["rng"]["cpu"])
    if trainer.device.type == "cuda" and checkpoint["rng"]["cuda"]:
        torch.cuda.set_rng_state(checkpoint["rng"]["cuda"][0], trainer.device)
    progress.update(checkpoint["progress"])
    if "model_flops" not in checkpoint["progress"]:  # a checkpoint from before the count per stage: one count
        progress["model_flops"] = progress["tokens"] * trainer.flops_per_token
    log.write(f"resumed from {config.resume} at step {progress['step']}")


class Run:
    """The timed loop of one process and what it reads and writes: validations, checkpoints, log lines, results.

    The loss stays on the device until a read: a log line, a validation, a checkpoint, a stop. Between reads no step
    waits for the device (a sync every step idles the GPU while the CPU queues the next step's work). The clock
    starts after a sync and stops after the sync at the read, so the timed windows cover exactly the steps; each
    read is logged, with the window's mean step time. log_every=1 (the default) reads, and syncs, every step. A
    non-finite loss is caught at the first read after it (at most log_every - 1 steps later), always before a
    checkpoint is written, and the step where it first appeared is named."""

    def __init__(self, config, trainer, log, paths, val, num_steps, wall_start, wandb_run=None, resources=None):
        self.config, self.trainer, self.log, self.val, self.num_steps = config, trainer, log, val, num_steps
        self.run_dir, self.results_path, self.checkpoint_path = paths
        self.wall_start, self.wandb_run = wall_start, wandb_run
        self.peak = peak_flops(config, trainer.device)
        # the totals of the run so far; a checkpoint carries them, so that a resumed run's results cover all of it
        self.progress = {"step": 0, "training_time": 0.0, "eval_time": 0.0, "warmup_time": 0.0, "wall_time": 0.0,
                         "tokens": 0, "model_flops": 0}
        self.earlier_wall_time = 0.0
        # what the run used besides the timed work (harness/resources.py), measured from the start of train()
        self.resources = resources or Resources(wall_start)

    def save(self, state):
        """On every process; with the wall time so far."""
        state["wall_time"] = self.earlier_wall_time + time.perf_counter() - self.wall_start
        t0 = time.perf_counter()
        digest = save_checkpoint(self.checkpoint_path, self.trainer.model, self.trainer.optimizer, self.trainer.loader,
                                 state, self.config, self.trainer.rank)
        self.resources.phase("checkpoints", time.perf_counter() - t0)
        if digest:
            self.log.write(f"checkpoint: step:{state['step']} weights_sha256:{digest}", echo=False)

    def validate(self, step):
        trainer, (val_tokens, token_bytes) = self.trainer, self.val
        synchronize(trainer.device)
        t0 = time.perf_counter()
        val_loss, val_bpb = evaluate(trainer.forward, val_tokens, token_bytes, self.config, trainer.rank,
                                     trainer.world, trainer.device, trainer.autocast)
        self.progress["eval_time"] += time.perf_counter() - t0
        self.resources.phase("evaluation", time.perf_counter() - t0)
        self.log.write(f"step:{step}/{self.num_steps} val_loss:{val_loss:.6f} val_bpb:{val_bpb:.6f} "
                       f"train_time_ms:{1000 * self.progress['training_time']:.0f}")
        if self.wandb_run:
            self.wandb_run.log({"val_loss": val_loss, "val_bpb": val_bpb}, step=step)
        return val_loss, val_bpb

    def read_window(self, step, losses, window_time, multiplier, window_tokens):
        """The losses of the steps since the last read: stop on one that is not finite, else log the last."""
        self.progress["training_time"] += window_time
        step_time = window_time / len(losses)
        values = torch.stack(losses).tolist()
        bad = next((i for i, value in enumerate(values) if not math.isfinite(value)), None)
        if bad is not None:
            bad_step, loss = step - len(values) + 1 + bad, values[bad]
            saved = (f"the last checkpoint is {self.checkpoint_path}" if os.path.exists(self.checkpoint_path)
                     else "no checkpoint was saved")
            self.log.write(f"step:{bad_step}/{self.num_steps} train_loss:{loss} -- stopping: the loss is not finite "
                           f"(read after step {step}); {saved}")
            raise FloatingPointError(f"step {bad_step}: train loss is {loss}; stopped ({saved}). Try a lower lr or "
                                     "check the data")
        loss, tok_per_s = values[-1], window_tokens / window_time
        flops = self.trainer.flops_per_token
        mfu = f"{100 * flops * tok_per_s / (self.peak * self.trainer.world):.1f}%" if self.peak else "n/a"
        self.log.write(f"step:{step}/{self.num_steps} train_loss:{loss:.6f} lr:{multiplier:.4f} "
                       f"step_ms:{1000 * step_time:.2f} tok/s:{tok_per_s:.0f} mfu:{mfu} "
                       f"train_time_ms:{1000 * self.progress['training_time']:.0f}"
                       + ("" if self.trainer.schedule.constant else f" tokens:{self.progress['tokens']}"))
        if self.wandb_run:
            self.wandb_run.log({"train_loss": loss, "lr_multiplier": multiplier, "tok_per_s": tok_per_s}, step=step)

    def loop(self):
        """Steps until the horizon, the target or --stop_after: (status, val loss, val bpb); status None for a stop
        that will be resumed."""
        config, progress, num_steps = self.config, self.progress, self.num_steps
        # a final checkpoint knows how its run ended: resumed before results.json was written, it only validates
        status, steps_here, val_loss, val_bpb = progress.pop("status", "finished"), 0, None, None
        window_start, window_losses, window_tokens = None, [], 0
        while progress["step"] < num_steps and status == "finished":
            if window_start is None:
                synchronize(self.trainer.device)
                window_start = time.perf_counter()
                self.resources.window_start()
            changed = self.trainer.change_model(progress["step"], num_steps)
            if changed:
                self.log.write(f"model_surgery: before step {progress['step'] + 1}: " + ", ".join(
                    f"{new} (state from {old})" if old else f"{new} (fresh state)" for new, old in changed.items()))
            loss, multiplier = self.trainer.step(progress["step"], num_steps)
            window_losses.append(loss)
            tokens = self.trainer.schedule(progress["step"])
            progress["tokens"] += tokens
            progress["model_flops"] += tokens * self.trainer.flops_per_token_at(progress["step"])
            window_tokens += tokens
            progress["step"] = step = progress["step"] + 1
            steps_here += 1
            val_due = (config.val_every and step % config.val_every == 0) or step == num_steps
            save_due = (config.save_every and step % config.save_every == 0  # on every rank: all read at the same steps
                        and not (step == num_steps and config.save_final))  # the final save follows: not twice
            stop_due = config.stop_after and steps_here == config.stop_after and step < num_steps
            if not (step % config.log_every == 0 or val_due or save_due or stop_due):
                continue
            synchronize(self.trainer.device)
            self.resources.window_end()
            self.read_window(step, window_losses, time.perf_counter() - window_start, multiplier, window_tokens)
            window_start, window_losses, window_tokens = None, [], 0
            if val_due:
                val_loss, val_bpb = self.validate(step)
                if config.target_val_loss and val_loss <= config.target_val_loss:
                    status = "target_reached"
                    self.log.write(f"step:{step}/{num_steps} reached the target val loss {config.target_val_loss}")
                    break
            if save_due or stop_due:
                self.save(progress)
            if stop_due:
                self.log.write(f"step:{step}/{num_steps} stopping after {steps_here} steps (--stop_after); resume "
                               f"with --resume={self.checkpoint_path}")
                return None, None, None
        if val_loss is None:
            val_loss, val_bpb = self.validate(progress["step"])
        return status, val_loss, val_bpb

    def results(self, status, val_loss, val_bpb, git, env, tokenizer):
        config, progress, trainer = self.config, self.progress, self.trainer
        training_time, flops, world, peak = progress["training_time"], trainer.flops_per_token, trainer.world, self.peak
        val_tokens = self.val[0]
        return {
            "schema_version": RESULTS_SCHEMA, "run_id": os.path.basename(self.run_dir), "status": status,
            "preset": config.preset, "seed": config.seed, "config": dataclasses.asdict(config),
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "scaling_params": trainer.optimizer.counted_params,
            "vocab_size": tokenizer["vocab_size"], "total_batch_tokens": config.total_batch_tokens,
            "steps": progress["step"], "tokens": progress["tokens"],
            "model_flops_per_token": flops, "model_flops": progress["model_flops"],
            "hardware_flops": training_time * world * peak if peak else None,
            "mfu": progress["model_flops"] / (training_time * world * peak) if peak else None,
            "training_time_s": training_time, "warmup_time_s": progress["warmup_time"],
            "eval_time_s": progress["eval_time"],
            "wall_time_s": self.earlier_wall_time + time.perf_counter() - self.wall_start,
            "val_loss": val_loss, "val_bpb": val_bpb,
            "val_tokens": (len(val_tokens) - 1) // config.seq_len * config.seq_len,
            "git": git, "environment": env,
            "data": {"train_files": [os.path.basename(f) for f in trainer.loader.files], "val_files": config.val_files,
                     "tokenizer": config.tokenizer, "tokenizer_sha256": tokenizer["sha256"]},
        }


def train(recipe, config, rank=0, world=1, device=None):
    """The whole run for one process; returns the results (rank 0) after writing them (None after --stop_after)."""
    wall_start = time.perf_counter()
    resources = Resources(wall_start)  # its reads and untimed set-up count from here
    device = device or resolve_device(config)
    check_config(recipe, config, world, device)
    run_dir, results_path, checkpoint_path = run_folder(config)
    if config.resume and os.path.exists(results_path):  # finished: a resume would only rewrite what is there
        results = read_results(results_path)
        check_same_settings(config, results["config"], f"--resume={config.resume}: the finished run")
        if rank == 0:
            print(f"{run_dir} is finished ({results_path} is there): nothing to resume, nothing changed", flush=True)
        return results
    refuse_taken_folder(config, run_dir, checkpoint_path)
    tokenizer = load_tokenizer_info(config.tokenizer)
    data_notices = check_data_matches_tokenizer(config, tokenizer)
    val_tokens = load_val_tokens(config.val_files, config.val_tokens, config.seq_len, tokenizer["vocab_size"])
    checkpoint = load_checkpoint(config.resume, config) if config.resume else None
    if checkpoint is not None:
        check_saved_weights(checkpoint, os.path.join(run_dir, "log.txt"), f"--resume={config.resume}")
    trainer = Trainer(recipe, config, tokenizer, rank, world, device)
    if checkpoint is not None:  # first: a position in other shards stops the run before anything is written
        trainer.loader.load_state_dict(checkpoint["loader"])
    num_steps = num_training_steps(config, trainer.optimizer.counted_params, trainer.flops_per_token, trainer.schedule)
    trainer.schedule.check(world, num_steps, getattr(config, "rows", "slices"))
    if world > 1:
        dist.barrier()  # every process has looked before the first one writes
    if rank == 0:
        os.makedirs(run_dir, exist_ok=True)
    log = RunLog(os.path.join(run_dir, "log.txt"), enabled=rank == 0)
    git, env = write_header(recipe, config, log, run_dir, trainer, tokenizer, val_tokens, fresh=checkpoint is None)
    for line in (model_line(config, trainer, tokenizer, num_steps), *data_notices, trainer.loader.describe(num_steps)):
        log.write(line)
    wandb_run = None
    if config.wandb and rank == 0:
        import wandb
        wandb_run = wandb.init(project="speedrun", name=os.path.basename(run_dir), mode=config.wandb,
                               config=dataclasses.asdict(config))
    run = Run(config, trainer, log, (run_dir, results_path, checkpoint_path), (val_tokens, tokenizer["token_bytes"]),
              num_steps, wall_start, wandb_run, resources)
    if checkpoint is not None:
        for step in range(checkpoint["progress"]["step"]):  # the model's parameters as they were at the checkpoint
            trainer.change_model(step, num_steps, carry=False)
        resume_from(checkpoint, trainer, run.progress, log, config)
    run.earlier_wall_time = run.progress["wall_time"]  # of the starts before this one, up to their last checkpoint
    run.resources.setup_done()
    warmup_before = run.progress["warmup_time"]
    warm_up(trainer, config, run.progress, num_steps, log)
    run.resources.phase("warm-up", run.progress["warmup_time"] - warmup_before)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    status, val_loss, val_bpb = run.loop()
    if status is None:
        return None
    if config.save_final:
        run.save(dict(run.progress, status=status))
    results = run.results(status, val_loss, val_bpb, git, env, tokenizer)
    if trainer.use_compile or trainer.schedule.stage_fn:
        log.write(f"compile: {torch._dynamo.utils.counters['stats']['unique_graphs'] - graphs} graphs compiled after "
                  "the warm-up (the first validation compiles evaluation's own)")
    log.write(f"resources: {json.dumps(run.resources.figures(trainer.model, trainer.device, trainer.comm))}")
    dropped = f"; {trainer.loader.dropped_text()}" if hasattr(trainer.loader, "dropped_text") else ""
    log.write(f"loader: epoch {trainer.loader.epochs():.3f} reached ({run.progress['tokens']:,} tokens trained on"
              f"{dropped})")
    log.write(f"done: {status}, val_loss:{val_loss:.6f} val_bpb:{val_bpb:.6f} "
              f"training_time:{results['training_time_s']:.2f}s warmup_time:{run.progress['warmup_time']:.2f}s "
              f"eval_time:{run.progress['eval_time']:.2f}s")
    if rank == 0:
        write_results(results_path, results)
    if wandb_run:
        wandb_run.finish()
    trainer.loader.close()
    return results


def main(recipe, argv=None):
    """The command line of a recipe: parse, set up the processes, train; errors are one line."""
    try:
        config = parse_args(recipe.Config, recipe.PRESETS, sys.argv[1:] if argv is None else argv, recipe.__doc__)
    except ConfigError as e:
        sys.exit(f"error: {e}")
    try:
        if getattr(config, "dry_run", False):  # the plan only: no GPU, no data, the model on the meta device
            from harness.dryrun import dry_run
            return dry_run(recipe, config)
        rank, world, device = init_distributed(config)
        train(recipe, config, rank, world, device)
    except (ConfigError, ShardError, FloatingPointError, CheckpointError) as e:
        sys.exit(f"error: {e}")
    except torch.OutOfMemoryError as e:
        sys.exit(f"error: {out_of_memory(config, e)}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
