"""A per-example CORE evaluator, written for clarity, to check eval_core.py's batched fast path against.

Prompts and scored spans come from eval_core.render and eval_core.scored_spans (tested on their own); everything
after that is done here, one prompt at a time: tokenize with BOS, cut from the left to max_len keeping the span,
one unpadded forward pass, the mean cross-entropy of the span and the greedy check, then the choice.
"""

import torch

import eval_core


@torch.no_grad()
def score_prompt(model, tokens, start, end, max_len):
    """(mean loss over tokens[start:end], whether greedy argmax reproduces all of them) for one prompt alone."""
    cut = max(0, len(tokens) - max_len)
    tokens, start, end = tokens[cut:], start - cut, end - cut
    assert start >= 1, "the scored span must fit the context"
    device = next(model.parameters()).device
    logits = model(torch.tensor([tokens], device=device))[0].float()  # [T, vocab]
    log_probs = torch.log_softmax(logits, dim=-1)
    losses, greedy = [], []
    for p in range(start, end):  # token p is predicted by the logits at position p - 1
        losses.append(-log_probs[p - 1, tokens[p]].item())
        greedy.append(int(logits[p - 1].argmax()) == tokens[p])
    return sum(losses) / len(losses), all(greedy)


def reference_scores(model, task, row, tok, max_len):
    """[(mean loss, greedy ok)] for each scored prompt of a row: every choice or option, or the LM "with" prompt."""
    token_lists = [[tok.bos_id] + tok.encode(prompt) for prompt in eval_core.render(task, row)]
    spans = eval_core.scored_spans(task, token_lists)
    if task.kind == "language_modeling":
        token_lists = token_lists[1:]  # "without" only marks where the continuation starts
    return [score_prompt(model, tokens, start, end, max_len) for tokens, (start, end) in zip(token_lists, spans)]


def reference_predictions(model, tasks, tok, max_len):
    """Per task, per row: the chosen index (lowest mean loss, first on ties) or, for LM, the greedy check."""
    chosen = []
    for task in tasks:
        per_row = []
        for row in range(len(task.rows)):
            scores = reference_scores(model, task, row, tok, max_len)
            if task.kind == "language_modeling":
                per_row.append(scores[0][1])
            else:
                losses = [loss for loss, _ in scores]
                per_row.append(min(range(len(losses)), key=lambda i: (losses[i], i)))
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
