"""harness/optim.py: the sharded optimizer engine. A recipe gives it a parameter table (which update rule, lr and
weight decay each parameter gets) and its update rules as plain functions; the engine does the rest.

The gradients arrive in flat buckets (harness/comm.py, GradientBucket), each reduce-scattered as soon as the
backward has finished it. Then, bucket by bucket, this process runs the update rule on its shard and starts the
all-gather of the results, so that gathers overlap the next bucket's math. The math is one process's on any number
of processes (the mean gradient, the same rule on the same numbers), and each process keeps 1/world of the state.

Two kinds of update rule (UpdateRule.shards):
- "elements" (AdamW, Lion, ...): fn(params, grads, states, lr, weight_decay, hp) updates, in place, this process's
  slices of its parameters (1-D fp32 tensors) given their gradients' slices; the new values are all-gathered.
- "matrices" (Muon, ...): fn(grads, state, hp) returns the update direction of a stack of same-shape matrices
  [count, rows, cols] that this process owns whole; the directions (bf16) are all-gathered and every process applies
  them all: p <- p x (1 - lr x weight_decay) - lr x lr_scale(rows, cols) x direction.
  A matrix rule with sees_params=True also gets params=, the stack's current values [count, rows, cols] (read-only:
  cautious weight decay, say, folds its decay into the direction and leaves the row's weight_decay at 0).
  A matrix rule with returns="step" returns the whole change instead, lr and decay included: the engine gives it
  hp.lr and hp.weight_decay, one value per matrix [count, 1, 1] in float64 (the row's lr x the schedule's multiplier
  x lr_scale, as Python multiplies them; the row's weight decay), all-gathers the steps in fp32 and applies
  p <- p - step, so that a rule decides the precision of its update (nanochat rounds lr x direction to bf16).
A rule keeps its state in the dicts it is given (`states`: one per slice; `state`: one per stack), created on its
first step; the engine shards, snapshots and checkpoints them by parameter name, the same on any number of processes.
A row's own settings (Rule.settings: AdamW's betas for the head, say) reach the rule as the dict hp.settings; rows that
differ in them are separate calls.
An element rule's state tensors are shaped like its slice; a matrix rule's may have any shape whose first dimension is
the stack's count (a per-row second moment [count, rows], a momentum [count, rows, cols]): each matrix's part is saved
under its parameter's name. UpdateRule.every = k runs a rule on every k-th step only (steps k-1, 2k-1, ...: "Adam on
odd steps" with k = 2), on the mean of the k steps' mean gradients, which the engine keeps meanwhile as sharded state
("engine.pending_grad", checkpointed, so a resume between two updates is exact); its all-gather is skipped on the
other steps. `hp` holds the step count (`step`), the count of this rule's earlier updates (`rule_step`; `step` when
every is 1), the config, the schedule's values of this step, for a matrix stack its lr factor (`lr_scale`) and
`compiled` (a function's compiled version when compiling, else the function).
"""

import math
import re
import types
from dataclasses import dataclass
from typing import Callable

import torch

from harness.comm import GradientBucket, element_layout, matrix_layout
from harness.config import ConfigError


@dataclass(frozen=True)
class Rule:
    """A row of a recipe's parameter table: parameters whose whole name matches `pattern` get this update rule, lr
    and weight decay. parts: a matrix of `parts` matrices stacked by rows (a fused qkv updated as q, k and v);
    counts: the parameter counts in the total that --tokens_per_param multiplies; settings: (name, value) pairs the
    rule reads as hp.settings (its betas, say)."""
    pattern: str
    update: str
    lr: float
    weight_decay: float = 0.0
    parts: int = 1
    counts: bool = False
    settings: tuple = ()


@dataclass(frozen=True)
class UpdateRule:
    """An update rule: its function, how the engine shards it ("elements" or "matrices"), for matrices the factor of
    the lr for a matrix of rows x cols (1 unless the rule says otherwise) and whether it sees the matrices' values
    (sees_params), what it returns ("direction", which the engine scales by the lr, or the whole "step"), and the
    steps it runs on (every k-th; the gradients between are averaged in)."""
    fn: Callable
    shards: str = "elements"
    lr_scale: Callable = None
    sees_params: bool = False
    returns: str = "direction"
    every: int = 1


PENDING = "engine.pending_grad"  # the engine's own state beside a rule's: the gradients summed since its last update


def due(rule, hp):
    """Whether the rule updates at this step; sets hp.rule_step (its updates before this one)."""
    hp.rule_step = (hp.step + 1) // rule.every - 1 if rule.every > 1 else hp.step
    return rule.every == 1 or (hp.step + 1) % rule.every == 0


def gathered(rule, state, gradient, update_now):
    """The gradient a rule of every > 1 sees: the mean of the steps since its last update (kept in state[PENDING]
    meanwhile); None on a step where it does not update."""
    if rule.every == 1:
        return gradient
    pending = state.setdefault(PENDING, torch.zeros_like(gradient))
    pending.add_(gradient)
    if not update_now:
        return None
    mean = pending / rule.every
    pending.zero_()
    return mean


def assign(model, table, rules):
    """{parameter: (its name, its Rule)}: the first row whose pattern matches the whole name. A parameter no row
    matches, a row naming an unknown update rule, or a matrix rule on a parameter that is not 2-D is an error."""
    assigned = {}
    for name, p in model.named_parameters():
        row = next((row for row in table if re.fullmatch(row.pattern, name)), None)
        if row is None:
            raise ConfigError(f"parameter {name} {tuple(p.shape)} matches no row of the parameter table; add a row "
                              "for it (parameter_table in train_gpt.py)")
        if row.update not in rules:
            raise ConfigError(f"the parameter table gives {name} the update rule {row.update!r}, which is not in "
                              f"UPDATE_RULES ({', '.join(rules)})")
        if rules[row.update].shards == "matrices" and (p.ndim != 2 or p.size(0) % row.parts):
            raise ConfigError(f"{name} {tuple(p.shape)} gets {row.update!r}, a rule on whole matrices: give it a row "
                              f"with an element-wise rule, or make it a matrix of {row.parts} parts")
        assigned[p] = (name, row)
    return assigned


def bucket_plan(params, assigned, rules, ready_order, bucket_mb):
    """Parameters into gradient buckets, in the order the backward finishes them (ready_order: parameter names, the
    first one ready first). One kind of bucket per update rule and dtype; a bucket is cut when the next parameter
    would take it over bucket_mb, and is ready when its last parameter is."""
    position = {name: i for i, name in enumerate(ready_order)}
    order = sorted(params, key=lambda p: position.get(assigned[p][0], len(position)))
    open_buckets, done = {}, []
    for p in order:
        key = (assigned[p][1].update, p.dtype)
        bucket = open_buckets.get(key)
        size = p.numel() * p.element_size()
        if bucket and bucket["bytes"] + size > bucket_mb * 2**20:
            done.append(open_buckets.pop(key))
            bucket = None
        if bucket is None:
            bucket = open_buckets[key] = {"update": key[0], "params": [], "bytes": 0}
        bucket["params"].append(p)
        bucket["bytes"] += size
    done += open_buckets.values()
    ready = lambda b: max(position.get(assigned[p][0], len(position)) for p in b["params"])
    return [(b["update"], b["params"]) for b in sorted(done, key=ready)]


class ElementShard:
    """An element-wise rule on this process's slice of a bucket split by elements; the new values are all-gathered
    straight into the parameters, which become views of the bucket's flat buffer of values (so the gather needs no
    copy after). The rule always sees fp32: bf16 parameters are updated through an fp32 copy of the slice."""

    def __init__(self, bucket, rule, rows):
        layout, rank, shard = bucket.layout, bucket.comm.rank, bucket.layout.shard
        self.bucket, self.rule, self.handle = bucket, rule, None
        self.values = torch.zeros(layout.numel, dtype=bucket.params[0].dtype, device=bucket.grads.device)
        for p, offset in zip(bucket.params, layout.offsets):
            view = self.values[offset:offset + p.numel()]
            view.copy_(p.detach().view(-1))
            p.data = view.view_as(p)
        self.mine = self.values[rank * shard:(rank + 1) * shard]
        self.work = self.mine if self.mine.dtype == torch.float32 else torch.zeros(shard, device=self.mine.device)
        # segments: (parameter index, start and end in the parameter, its slice of `work`, its state), grouped by
        # (lr, weight decay) so that each group is one call of the rule
        self.segments, self.groups, start = [], {}, rank * shard
        for i, (p, offset, row) in enumerate(zip(bucket.params, layout.offsets, rows)):
            lo, hi = max(offset, start), min(offset + p.numel(), start + shard)
            if lo < hi:
                segment = (i, lo - offset, hi - offset, self.work[lo - start:hi - start], {})
                self.segments.append(segment)
                self.groups.setdefault((row.lr, row.weight_decay, row.settings), []).append(segment)

    def step(self, hp):
        mean = self.bucket.mean_gradient()
        update_now = due(self.rule, hp)
        self.handle = None
        if self.work is not self.mine and update_now:
            self.work.copy_(self.mine)
        start = self.bucket.comm.rank * self.bucket.layout.shard
        offsets = self.bucket.layout.offsets
        for (lr, weight_decay, settings), segments in self.groups.items():
            grads = [gathered(self.rule, state, mean[offsets[i] + lo - start:offsets[i] + hi - start], update_now)
                     for i, lo, hi, _, state in segments]
            if update_now:
                hp.settings = dict(settings)
                self.rule.fn([s[3] for s in segments], grads, [s[4] for s in segments], lr * hp.lr_multiplier,
                             weight_decay, hp)
        if not update_now:
            return
        if self.work is not self.mine:
            self.mine.copy_(self.work)
        self.handle = self.bucket.comm.all_gather(self.values, self.mine)

    def finish(self, hp):
        if self.handle is not None:
            self.handle.wait()

    def states(self):
        """(parameter index, start, end, state dict) of each slice this process updates."""
        return [(i, lo, hi, state) for i, lo, hi, _, state in self.segments]


class MatrixShard:
    """A matrix rule on this process's whole matrices of a bucket, each stack of same-shape matrices in one call; the
    directions (bf16; a rule's whole steps in fp32) of every process are all-gathered and every process applies all
    of them."""

    def __init__(self, bucket, rule, rows):
        layout, rank, shard, device = bucket.layout, bucket.comm.rank, bucket.layout.shard, bucket.grads.device
        self.bucket, self.rule, self.handle = bucket, rule, None
        self.steps_whole = rule.returns == "step"
        dtype = torch.float32 if self.steps_whole else torch.bfloat16
        self.updates = torch.zeros(layout.numel, dtype=dtype, device=device)
        self.mine = self.updates[rank * shard:(rank + 1) * shard]
        self.stacks = [(offset - rank * shard, shape, {}) for offset, _, shape in layout.stacks[rank]]
        self.members = [indices for _, indices, _ in layout.stacks[rank]]  # the parameters of each stack, in order
        self.rows = rows
        # for a rule that returns whole steps: each stack's rows' lrs and weight decays, made once (no copy per step)
        self.row_values = [(self.per_matrix(m, shape[0] // len(m), lambda row: row.lr),
                            self.per_matrix(m, shape[0] // len(m), lambda row: row.weight_decay))
                           for (_, shape, _), m in zip(self.stacks, self.members)] if self.steps_whole else []
        for members in self.members:
            if len({rows[i].settings for i in members}) > 1:
                raise ConfigError(f"parameters of one shape {tuple(bucket.params[members[0]].shape)} get the update "
                                  "rule with different settings; a stack is one call: give them the same settings")
        self.by_factor = {}  # every matrix's direction in the gathered buffer, by (lr, lr scale, weight decay)
        self.lr_scale = lr_scale = rule.lr_scale or (lambda rows, cols: 1.0)
        self.updated = False
        for p, offset, row in zip(bucket.params, layout.offsets, rows):
            key = (0.0, 0.0, 0.0) if self.steps_whole else \
                (row.lr, lr_scale(p.size(0) / row.parts, p.size(1)), row.weight_decay)
            params, updates = self.by_factor.setdefault(key, ([], []))
            params.append(p)
            updates.append(self.updates[offset:offset + p.numel()].view_as(p))

    def per_matrix(self, members, parts, value):
        """One value per matrix of a stack [count, 1, 1] (float64): value(row) of each member's row, for each part."""
        values = [value(self.rows[i]) for i in members for _ in range(parts)]
        return torch.tensor(values, dtype=torch.float64, device=self.updates.device).view(-1, 1, 1)

    def step(self, hp):
        mean = self.bucket.mean_gradient()
        self.updated, self.handle = due(self.rule, hp), None
        for k, ((offset, shape, state), members) in enumerate(zip(self.stacks, self.members)):
            size = math.prod(shape)
            grads = gathered(self.rule, state, mean[offset:offset + size].view(shape), self.updated)
            if not self.updated:
                continue
            hp.lr_scale = self.lr_scale(shape[1], shape[2])
            hp.settings = dict(self.rows[members[0]].settings)
            if self.steps_whole:  # in float64, as Python's floats multiply
                hp.lr, hp.weight_decay = self.row_values[k]
                hp.lr = hp.lr * hp.lr_multiplier * hp.lr_scale
            extra = {"params": torch.stack([self.bucket.params[i].detach() for i in members]).view(shape)} \
                if self.rule.sees_params else {}
            direction = self.rule.fn(grads, state, hp, **extra)
            self.mine[offset:offset + size].view(shape).copy_(direction)
        if self.updated:
            self.handle = self.bucket.comm.all_gather(self.updates, self.mine)

    def finish(self, hp):
        if self.handle is not None:
            self.handle.wait()
        if not self.updated:
            return
        for (lr, scale, weight_decay), (params, updates) in self.by_factor.items():
            if self.steps_whole:  # the rule's whole change, in fp32
                torch._foreach_sub_(params, updates)
                continue
            lr = lr * hp.lr_multiplier
            if weight_decay:  # decoupled, scaled by the lr
                torch._foreach_mul_(params, 1 - lr * weight_decay)
            torch._foreach_add_(params, updates, alpha=-lr * scale)

    def states(self):
        """(offset in the bucket, stack shape, state dict) of each stack this process updates."""
        return [(offset + self.bucket.comm.rank * self.bucket.layout.shard, shape, state)
                for offset, shape, state in self.stacks]


class ShardedOptimizer:
    """The engine: the parameter table's update rules on the gradient buckets, each process updating its shard.

    ready_order names the parameters in the order the backward finishes their gradients (harness/trace.py reads it
    off the model), so that a bucket goes out as soon as the backward is done with it; `compiled` is what the rules
    get as hp.compiled."""

    def __init__(self, model, table, rules, config, comm, accum_steps=1, ready_order=(), compiled=lambda fn: fn):
        assigned = assign(model, table, rules)
        reduce_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[config.reduce_dtype]
        self.comm, self.steps = comm, 0
        self.hp = types.SimpleNamespace(step=0, config=config, lr_multiplier=1.0, compiled=compiled)
        self.counted_params = sum(p.numel() for p, (_, row) in assigned.items() if row.counts)
        self.buckets, self.shards, self.names, matrix_load = [], [], [], [0] * comm.world
        for update, params in bucket_plan(list(model.parameters()), assigned, rules, ready_order, config.bucket_mb):
            rule, rows = rules[update], [assigned[p][1] for p in params]
            shapes = [tuple(p.shape) for p in params]
            layout = element_layout(shapes, comm.world) if rule.shards == "elements" else \
                matrix_layout(shapes, comm.world, [row.parts for row in rows], matrix_load)
            bucket = GradientBucket(layout, params, comm, reduce_dtype, accum_steps, (self.buckets or [None])[-1])
            self.buckets.append(bucket)
            self.names.append([assigned[p][0] for p in params])
            self.shards.append((ElementShard if rule.shards == "elements" else MatrixShard)(bucket, rule, rows))

    def set_schedule(self, lr_multiplier, **values):
        """This step's lr multiplier (of every row's lr) and the other values the schedule gives the rules (hp)."""
        self.hp.lr_multiplier = lr_multiplier
        vars(self.hp).update(values)

    @torch.no_grad()
    def step(self):
        self.hp.step = self.steps
        for bucket in self.buckets:  # any bucket the hooks did not start (a parameter without a gradient)
            if not bucket.launched:
                bucket.launch()
        for shard in self.shards:  # wait for the bucket's gradients, update this process's shard, start the gather
            shard.step(self.hp)
        for shard in self.shards:
            shard.finish(self.hp)
        for bucket in self.buckets:
            bucket.reset()
        self.steps += 1

    def state_dict(self):
        """This process's shard of the state (snapshots within a run; checkpoints use full_state_dict)."""
        return {"steps": self.steps, "states": [[dict(state) for *_, state in shard.states()] for shard in self.shards]}

    def load_state_dict(self, saved):
        self.steps = saved["steps"]
        for shard, states in zip(self.shards, saved["states"]):
            for (*_, state), values in zip(shard.states(), states):
                device = shard.bucket.grads.device
                state.clear()
                state.update({key: value.to(device, copy=True) for key, value in values.items()})

    def release(self):
        """Lets go of the parameters (their hooks and gradient views), for an optimizer rebuilt after a change of the
        model's parameters (harness/loop.py, Trainer.change_model)."""
        for bucket in self.buckets:
            bucket.release()

    def state_bytes(self):
        """Optimizer state held by this process."""
        return sum(t.numel() * t.element_size() for shard in self.shards for *_, state in shard.states()
                   for t in state.values())

    @staticmethod
    def _places(shard):
        """(offset in the bucket, shape, state) of each slice or stack this process updates."""
        if isinstance(shard, ElementShard):
            return [(shard.bucket.layout.offsets[i] + lo, (hi - lo,), state) for i, lo, hi, state in shard.states()]
        return shard.states()

    def _flat_shard(self, shard, key, dtype):
        """This process's part of a bucket-wide flat tensor of one state key (zeros where it holds none)."""
        start = self.comm.rank * shard.bucket.layout.shard
        mine = torch.zeros(shard.bucket.layout.shard, dtype=dtype, device=shard.bucket.grads.device)
        for offset, shape, state in self._places(shard):
            if key in state:
                mine[offset - start:offset - start + math.prod(shape)] = state[key].reshape(-1)
        return mine

    def full_state_dict(self):
        """The whole state by parameter name, the same for any world size: gathered to rank 0 (None elsewhere).
        Every process must call it: one gather per bucket and state key shaped like what it updates (a slice, a
        stack), and one gather of objects per bucket for a matrix rule's state of another shape."""
        out = {"steps": self.steps, "state": {}}
        for shard, names in zip(self.shards, self.names):
            held = {(key, str(t.dtype).removeprefix("torch."), self._kind(shard, shape, key, t))
                    for _, shape, state in self._places(shard) for key, t in state.items()}
            for key, dtype, kind in sorted(self.comm.union(held)):
                if kind != "flat":
                    continue
                full = self.comm.gather_to_first(self._flat_shard(shard, key, getattr(torch, dtype)))
                if full is not None:
                    for name, p, offset in zip(names, shard.bucket.params, shard.bucket.layout.offsets):
                        out["state"].setdefault(name, {})[key] = full[offset:offset + p.numel()].view_as(p).cpu().clone()
            if isinstance(shard, MatrixShard) and any(kind == "any" for *_, kind in self.comm.union(held)):
                every = self.comm.gather_objects_to_first(self._matrix_pieces(shard, names))
                for pieces in every or []:
                    for name, states in pieces.items():
                        out["state"].setdefault(name, {}).update(states)
        return out if self.comm.rank == 0 else None

    @staticmethod
    def _kind(shard, shape, key, tensor):
        """"flat": a state tensor shaped like the slice or stack it belongs to; "any": a matrix rule's state of another
        shape (first dimension: the stack's count). Anything else cannot be saved by parameter name: an error."""
        if tuple(tensor.shape) == tuple(shape):
            return "flat"
        if isinstance(shard, MatrixShard) and tensor.dim() >= 1 and tensor.size(0) == shape[0]:
            return "any"
        where = "a slice of its parameters (element rules)" if isinstance(shard, ElementShard) else \
            f"a stack of {shape[0]} matrices: its first dimension must be {shape[0]}"
        raise ConfigError(f"optimizer state {key!r} of shape {tuple(tensor.shape)} is not shaped for {where}: the "
                          "engine saves state by parameter name (harness/optim.py)")

    @staticmethod
    def _matrix_pieces(shard, names):
        """{parameter name: {key: its matrices' part [parts, ...]}} of this process's stacks, for the state keys that
        are not stack-shaped (on the CPU)."""
        pieces = {}
        for (_, shape, state), members in zip(shard.stacks, shard.members):
            parts = shape[0] // len(members)
            for key, t in state.items():
                if tuple(t.shape) != tuple(shape):
                    for j, i in enumerate(members):
                        pieces.setdefault(names[i], {})[key] = t[j * parts:(j + 1) * parts].cpu().clone()
        return pieces

    def load_full_state_dict(self, saved):
        """Takes this process's shard of a full_state_dict (made on any number of processes)."""
        self.steps = saved["steps"]
        for shard, names in zip(self.shards, self.names):
            if isinstance(shard, MatrixShard):
                self._load_matrix_state(shard, names, saved["state"])
                continue
            layout, device = shard.bucket.layout, shard.bucket.grads.device
            for key in sorted({key for name in names for key in saved["state"].get(name, {})}):
                full = None
                for name, p, offset in zip(names, shard.bucket.params, layout.offsets):
                    value = saved["state"][name][key]
                    full = torch.zeros(layout.numel, dtype=value.dtype) if full is None else full
                    full[offset:offset + p.numel()] = value.reshape(-1)
                for offset, shape, state in self._places(shard):
                    state[key] = full[offset:offset + math.prod(shape)].view(shape).to(device, copy=True)

    @staticmethod
    def _load_matrix_state(shard, names, saved):
        """Each stack's state from its matrices' parts by parameter name: a parameter-shaped value is the parameter's
        part of a stack-shaped state, any other value its part [parts, ...] of a state of another shape."""
        device = shard.bucket.grads.device
        for (_, shape, state), members in zip(shard.stacks, shard.members):
            parts = shape[0] // len(members)
            keys = sorted({key for i in members for key in saved.get(names[i], {})})
            state.clear()
            for key in keys:
                pieces = []
                for i in members:
                    value, p = saved[names[i]][key], shard.bucket.params[i]
                    pieces.append(value.reshape(parts, *shape[1:]) if tuple(value.shape) == tuple(p.shape) else value)
                state[key] = torch.cat(pieces).to(device, copy=True)
