"""harness/schedule.py: tokens per step. A recipe may define batch_tokens(step, config) (the step counted from 0; a
batch that grows during the run, modded-nanogpt's 131k -> 262k -> 393k); without it every step has
--total_batch_tokens. The loader, the gradient accumulation of each step, the horizons (--tokens_per_param,
--flops_budget), the log's token counts and the results all follow it. It depends on the step alone (not on the
horizon, which it decides)."""

from harness.config import ConfigError

MAX_STEPS = 10 ** 8  # a horizon by tokens or FLOPs that needs more steps than this is a mistake, not a run


class BatchSchedule:
    def __init__(self, recipe, config):
        self.fn, self.config = getattr(recipe, "batch_tokens", None), config

    @property
    def constant(self):
        return self.fn is None

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

    def check(self, world, steps):
        """Every step's batch splits into whole micro-batches of device_batch rows on every process."""
        per_pass = world * self.config.device_batch * self.config.seq_len
        for tokens in self.values(steps):
            if tokens % per_pass:
                what = "--total_batch_tokens" if self.fn is None else "a batch of the recipe's batch_tokens schedule"
                raise ConfigError(f"{what} ({tokens:,} tokens) is not a multiple of world size x device_batch x seq_len "
                                  f"= {world} x {self.config.device_batch} x {self.config.seq_len} = {per_pass:,}; change "
                                  "one of them (the global batch is kept by gradient accumulation)")

    def steps_for_tokens(self, tokens):
        """The fewest steps that train on at least `tokens` tokens."""
        if self.fn is None:
            return -(-int(tokens) // self.config.total_batch_tokens) if tokens > 0 else 0
        done, steps = 0, 0
        while done < tokens:
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
