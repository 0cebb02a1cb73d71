"""harness/schedule.py: what changes with the step. A recipe may define

- batch_tokens(step, config): the tokens of a step (the step counted from 0; a batch that grows during the run,
  modded-nanogpt's 131k -> 262k -> 393k); without it every step has --total_batch_tokens;
- stage(step, config): a dict of what else the step trains with, {"seq_len": L, ...} (a sequence length that grows,
  window sizes, anything its apply_stage(model, stage) sets on the model before the step); without it one stage of
  --seq_len. A step's rows are its tokens / its seq_len; rows shorter than --seq_len need --rows=documents.

The loader, the gradient accumulation of each step, the horizons (--tokens_per_param, --flops_budget), the log's
token counts, the model FLOPs (each stage counted at its own shape) and the results follow them, and a compiled run
compiles each stage in the untimed warm-up. They depend on the step alone (not on the horizon, which they decide)."""

import json

from harness.config import ConfigError

MAX_STEPS = 10 ** 8  # a horizon by tokens or FLOPs that needs more steps than this is a mistake, not a run


class BatchSchedule:
    def __init__(self, recipe, config):
        self.fn, self.config = getattr(recipe, "batch_tokens", None), config
        self.stage_fn = getattr(recipe, "stage", None)

    @property
    def constant(self):
        """One batch size and one stage: the log and the counts of a run without schedules."""
        return self.fn is None and self.stage_fn is None

    def stage(self, step):
        """What step `step` trains with besides its tokens (a dict; {} without a stage schedule)."""
        if self.stage_fn is None:
            return {}
        stage = self.stage_fn(step, self.config)
        if not isinstance(stage, dict):
            raise ConfigError(f"stage({step}) is {stage!r}: give a dict such as {{'seq_len': 1024}}")
        return stage

    @staticmethod
    def key(stage):
        return json.dumps(stage, sort_keys=True, default=str)

    def seq_len(self, step):
        seq_len = self.stage(step).get("seq_len", self.config.seq_len)
        if not isinstance(seq_len, int) or not 1 <= seq_len <= self.config.seq_len:
            raise ConfigError(f"stage({step})'s seq_len {seq_len!r} is not a length from 1 to --seq_len="
                              f"{self.config.seq_len} (the model's longest)")
        return seq_len

    def stages(self, start, steps):
        """{stage key: (its first step in start .. steps - 1, the stage)}, in order; {} without a stage schedule."""
        found = {}
        for step in range(start, steps) if self.stage_fn else ():
            found.setdefault(self.key(self.stage(step)), (step, self.stage(step)))
        return found

    def model_flops(self, steps, flops_of_stage):
        """Model FLOPs of steps 0 .. steps - 1: each step's tokens x its stage's count (flops_of_stage(stage), once
        per stage)."""
        by_stage, total = {}, 0
        for step in range(steps):
            stage = self.stage(step)
            key = self.key(stage)
            if key not in by_stage:
                by_stage[key] = flops_of_stage(stage)
            total += self(step) * by_stage[key]
        return total

    def __call__(self, step):
        """Tokens in step `step` (from 0)."""
        if self.fn is None:
            return self.config.total_batch_tokens
        tokens = self.fn(step, self.config)
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise ConfigError(f"batch_tokens({step}) is {tokens!r}: give a whole number of tokens, at least 1")
        return tokens

    def total(self, steps):
        """Tokens in steps 0 .. steps - 1."""
        return steps * self.config.total_batch_tokens if self.fn is None else sum(self(s) for s in range(steps))

    def values(self, steps):
        """The distinct batch sizes of steps 0 .. steps - 1, in order of first use."""
        return [self.config.total_batch_tokens] if self.fn is None else list(dict.fromkeys(self(s) for s in range(steps)))

    def check(self, world, steps, rows="slices"):
        """Every step's batch splits into whole micro-batches of device_batch rows of its seq_len on every process."""
        if self.stage_fn is not None:
            for step in range(steps):
                per_pass = world * self.config.device_batch * self.seq_len(step)
                if self(step) % per_pass:
                    raise ConfigError(f"step {step}: {self(step):,} tokens are not a multiple of world size x "
                                      f"device_batch x its seq_len = {world} x {self.config.device_batch} x "
                                      f"{self.seq_len(step)} = {per_pass:,}; change the schedule or --device_batch")
                if self.seq_len(step) != self.config.seq_len and rows != "documents":
                    raise ConfigError(f"stage({step}) has seq_len {self.seq_len(step)}: rows of another length than "
                                      "--seq_len need --rows=documents (rows that start at BOS)")
            return
        per_pass = world * self.config.device_batch * self.config.seq_len
        for tokens in self.values(steps):
            if tokens % per_pass:
                what = "--total_batch_tokens" if self.fn is None else "a batch of the recipe's batch_tokens schedule"
                raise ConfigError(f"{what} ({tokens:,} tokens) is not a multiple of world size x device_batch x seq_len "
                                  f"= {world} x {self.config.device_batch} x {self.config.seq_len} = {per_pass:,}; change "
                                  "one of them (the global batch is kept by gradient accumulation)")

    def steps_for_tokens(self, tokens):
        """The most steps that train on at most `tokens` tokens (nanochat's horizon: tokens // batch), at least 1."""
        if self.fn is None:
            return max(1, int(tokens) // self.config.total_batch_tokens)
        done, steps = self(0), 1
        while done + self(steps) <= tokens:
            done, steps = done + self(steps), steps + 1
            if steps > MAX_STEPS:
                raise ConfigError(f"{tokens:.3g} tokens take more than {MAX_STEPS:,} steps of the batch schedule")
        return steps

    def steps_within(self, flops_budget, flops_per_token):
        """The most steps whose model FLOPs stay within the budget."""
        if self.fn is None:
            return int(flops_budget // (flops_per_token * self.config.total_batch_tokens))
        used, steps = 0, 0
        while used + self(steps) * flops_per_token <= flops_budget:
            used, steps = used + self(steps) * flops_per_token, steps + 1
            if steps > MAX_STEPS:
                raise ConfigError(f"--flops_budget={flops_budget:.3g} allows more than {MAX_STEPS:,} steps")
        return steps
