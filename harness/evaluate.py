"""harness/evaluate.py: validation loss and bits per byte over a fixed set of val rows, the same on any number of
processes."""

import math

import torch
import torch.distributed as dist


@torch.no_grad()
def val_totals(model, val_tokens, token_bytes, config, rank, world, device, autocast):
    """This process's share of the val rows (dealt round-robin), as sums: nats, tokens, nats of the tokens that
    have bytes (specials excluded), and their UTF-8 bytes."""
    T = config.seq_len
    rows = list(range(rank, (len(val_tokens) - 1) // T, world))
    batch = config.val_batch or config.device_batch
    token_bytes = token_bytes.to(device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)
    for i in range(0, len(rows), batch):
        starts = torch.tensor(rows[i:i + batch])[:, None] * T
        chunk = val_tokens[starts + torch.arange(T + 1)].to(device)
        with autocast:
            losses = model(chunk[:, :-1], chunk[:, 1:], reduction="none").double()
        nbytes = token_bytes[chunk[:, 1:]]
        totals += torch.stack([losses.sum(), losses.new_tensor(losses.numel()), (losses * (nbytes > 0)).sum(),
                               nbytes.sum().double()])
    return totals


def evaluate(model, val_tokens, token_bytes, config, rank, world, device, autocast):
    """Val loss (nats per token) and bits per byte over the fixed val rows. Sums, not means, are reduced over
    the processes, so the result does not depend on the world size or the batch."""
    model.eval()
    totals = val_totals(model, val_tokens, token_bytes, config, rank, world, device, autocast)
    if world > 1:
        dist.all_reduce(totals)
    model.train()
    nats, tokens, byte_nats, nbytes = totals.tolist()
    return nats / tokens, byte_nats / nbytes / math.log(2)

