"""The plain reference for the sharded optimizer (the design before it): every gradient all-reduced on its own,
AdamW over whole parameters, Muon one matrix at a time. It re-implements the baseline recipe's parameter grouping
(train_gpt.parameter_table), so the tests that compare ShardedOptimizer with it are marked baseline; bench.comm
times it as "today's design"."""

import torch
import torch.distributed as dist

import train_gpt


class ReferenceOptimizer:
    """Mean gradients by one all-reduce per parameter, then torch's AdamW and a per-matrix Muon whose updates are
    broadcast by their owner (matrix i belongs to process i mod world)."""

    def __init__(self, model, config, rank=0, world=1, fused=None):
        self.model, self.config, self.rank, self.world = model, config, rank, world
        adam_scale = (model.embed.embedding_dim / 768) ** -0.5
        scalars = [p for p in model.parameters() if p.ndim < 2]
        embeds = [model.embed.weight, *(ve.weight for ve in model.value_embeds)]
        self.adam = torch.optim.AdamW([dict(params=embeds, lr=config.embed_lr * adam_scale),
                                       dict(params=[model.head.weight], lr=config.head_lr * adam_scale),
                                       dict(params=scalars, lr=config.scalar_lr)],
                                      betas=config.adam_betas, eps=config.adam_eps, weight_decay=0.0, fused=fused)
        for group in self.adam.param_groups:
            group["initial_lr"] = group["lr"]
        self.matrices = [p for p in model.blocks.parameters() if p.ndim == 2]  # the hidden matrices: Muon's
        self.momentum = [torch.zeros_like(p) for p in self.matrices]
        self.matrix_lr, self.muon_momentum = config.matrix_lr, config.muon_momentum

    def set_schedule(self, lr_multiplier, momentum):
        for group in self.adam.param_groups:
            group["lr"] = group["initial_lr"] * lr_multiplier
        self.matrix_lr, self.muon_momentum = self.config.matrix_lr * lr_multiplier, momentum

    @torch.no_grad()
    def step(self):
        if self.world > 1:
            for p in self.model.parameters():
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)
        self.adam.step()
        m, updates = self.muon_momentum, []
        for i, (p, buf) in enumerate(zip(self.matrices, self.momentum)):
            buf.lerp_(p.grad, 1 - m)
            if i % self.world == self.rank:
                updates.append(train_gpt.orthogonalize(p.grad.lerp(buf, m), self.config.ns_steps).float())
            else:
                updates.append(torch.empty_like(p))
            if self.world > 1:
                dist.broadcast(updates[-1], src=i % self.world)
        for p, update in zip(self.matrices, updates):
            scale = max(1.0, p.size(-2) / p.size(-1)) ** 0.5
            p.mul_(1 - self.matrix_lr * self.config.weight_decay)
            p.add_(update, alpha=-self.matrix_lr * scale)
        self.model.zero_grad(set_to_none=True)
