"""A per-example CORE evaluator, written for clarity, to check eval_core.py's batched fast path against.

It restates nanochat's evaluator (the reference behind the published scores) one row at a time, with nothing taken
from eval_core.py: render the row's prompts, tokenize each with BOS in front, find the scored spans (common token
prefix for choices, common suffix for schema options, the continuation for language modelling) on the whole
prompts, cut prompts longer than max_len from the left, run the row's prompts as one right-padded batch, and slice
each prompt's losses with Python's slice rules as the reference does (a span starting at position 0 slices from
position -1, the last one: nothing). The mean of nothing is NaN; the choice is Python's min() over the means,
found again in the list by identity, as the reference's `min` then `index` find it.
"""

import os
import random

import torch
import torch.nn.functional as F


def render_prompts(task, index):
    """The prompt strings of a row (for language modelling: [without, with] the continuation)."""
    row, d = task.rows[index], task.delimiter
    others = [i for i in range(len(task.rows)) if i != index]
    shots = [task.rows[i] for i in random.Random(1234 + index).sample(others, task.shots)] if task.shots > 0 else []
    if task.kind == "multiple_choice":
        blocks = [s["query"] + d + s["choices"][s["gold"]] for s in shots]
        return ["\n\n".join(blocks + [row["query"] + d + choice]) for choice in row["choices"]]
    if task.kind == "schema":
        blocks = [s["context_options"][s["gold"]] + d + s["continuation"] for s in shots]
        return ["\n\n".join(blocks + [option + d + row["continuation"]]) for option in row["context_options"]]
    blocks = [s["context"].strip() + d + s["continuation"] for s in shots]
    without = "\n\n".join(blocks + [row["context"].strip() + d])
    return [without.strip(), without + row["continuation"]]


def spans_of(task, token_lists):
    """(token lists to score, starts, ends) on the whole prompts."""
    if task.kind == "multiple_choice":
        common = len(os.path.commonprefix(token_lists))  # the whole shortest list when it prefixes all the others
        return token_lists, [common] * len(token_lists), [len(t) for t in token_lists]
    if task.kind == "schema":
        common = len(os.path.commonprefix([t[::-1] for t in token_lists]))
        return token_lists, [len(t) - common for t in token_lists], [len(t) for t in token_lists]
    without, with_ = token_lists
    assert len(without) < len(with_) and with_[:len(without)] == without, "the reference refuses this row"
    return [with_], [len(without)], [len(with_)]


@torch.no_grad()
def row_scores(model, task, index, tok, max_len):
    """[(mean loss, greedy ok)] for each scored prompt of a row: every choice or option, or the LM "with" prompt."""
    token_lists = [[tok.bos_id] + tok.encode(p) for p in render_prompts(task, index)]
    token_lists, starts, ends = spans_of(task, token_lists)
    cuts = [max(0, len(t) - max_len) for t in token_lists]
    assert all(s >= c for s, c in zip(starts, cuts)), "the reference fails on a span longer than the context"
    token_lists = [t[c:] for t, c in zip(token_lists, cuts)]
    starts, ends = [s - c for s, c in zip(starts, cuts)], [e - c for e, c in zip(ends, cuts)]
    width = max(len(t) for t in token_lists)
    batch = torch.tensor([t + [tok.bos_id] * (width - len(t)) for t in token_lists],
                         device=next(model.parameters()).device)
    logits = model(batch).float()
    losses = torch.full((len(token_lists), width), float("nan"), dtype=torch.float64)  # position p predicts p + 1
    losses[:, :-1] = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none").double().cpu()
    greedy = logits.argmax(-1).cpu()
    scores = []
    for i, (start, end) in enumerate(zip(starts, ends)):
        predicted, actual = greedy[i, start - 1:end - 1], batch[i, start:end].cpu()
        assert task.kind != "language_modeling" or len(predicted) == len(actual), "the reference fails here"
        exact = len(predicted) == len(actual) and bool((predicted == actual).all())
        scores.append((losses[i, start - 1:end - 1].mean().item(), exact))
    return scores


def reference_predictions(model, tasks, tok, max_len):
    """Per task, per row: the chosen index or, for LM, the greedy check."""
    chosen = []
    for task in tasks:
        per_row = []
        for index in range(len(task.rows)):
            scores = row_scores(model, task, index, tok, max_len)
            if task.kind == "language_modeling":
                per_row.append(scores[0][1])
            else:
                means = [loss for loss, _ in scores]
                lowest = min(means)
                per_row.append(next(i for i, m in enumerate(means) if m is lowest))
        chosen.append(per_row)
    return chosen


def reference_core(model, tasks, tok, max_len, chosen=None):
    """(CORE, per-task accuracies): accuracy against gold (or the share of greedy matches), centered by the random
    baseline, averaged over tasks. `chosen`: reference_predictions' result, when already computed."""
    accuracies = []
    for task, chosen in zip(tasks, chosen or reference_predictions(model, tasks, tok, max_len)):
        if task.kind == "language_modeling":
            accuracies.append(sum(chosen) / len(chosen))
        else:
            accuracies.append(sum(c == row["gold"] for c, row in zip(chosen, task.rows)) / len(chosen))
    centered = [(acc - task.baseline) / (1 - task.baseline) for task, acc in zip(tasks, accuracies)]
    return sum(centered) / len(centered), accuracies
