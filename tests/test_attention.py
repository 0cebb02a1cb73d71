"""The attention switch: FlexAttention and scaled_dot_product_attention agree, with sliding windows and document
masks; a document mask keeps documents from seeing each other."""

import pytest
import torch

import train_gpt
from harness.config import ConfigError
from harness.device import compile_by_block
from train_gpt import Config, attention, attention_masks

BOS = 0


def tokens(B=2, T=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(1, 50, (B, T), generator=g)
    idx[:, 0] = BOS
    idx[0, 20], idx[0, 45], idx[1, 33] = BOS, BOS, BOS  # documents of different lengths
    return idx


@pytest.mark.parametrize("window", [64, 16, 5])
@pytest.mark.parametrize("documents", [False, True])
def test_flex_attention_equals_sdpa(window, documents):
    torch.manual_seed(0)
    idx = tokens()
    q, k, v = (torch.randn(2, 64, 3, 16) for _ in range(3))
    outputs = {}
    for backend in ("sdpa", "flex"):
        masks = attention_masks(idx, [window], BOS if documents else None, backend)
        outputs[backend] = attention(q, k, v, masks[window], window, backend)
    assert torch.allclose(outputs["flex"], outputs["sdpa"], atol=1e-5)


def moving_documents(steps):
    """Batches of 2 x 64 tokens whose documents (BOS at the start and one more in each row) change length every step."""
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        idx = torch.randint(1, 50, (2, 64), generator=g)
        idx[:, 0] = BOS
        idx[0, 10 + 9 * step], idx[1, 50 - 11 * step] = BOS, BOS
        yield idx


def model(attention_backend, doc_mask=True, seq_len=64):
    config = Config(depth=2, model_dim=32, head_dim=16, seq_len=seq_len, short_window=16, doc_mask=doc_mask)
    torch.manual_seed(0)
    gpt = train_gpt.GPT(config, 64, bos_id=BOS)
    for p in gpt.parameters():
        torch.nn.init.normal_(p, std=0.1)
    gpt.attention_backend = attention_backend
    return gpt


def test_the_model_gives_the_same_logits_with_either_backend():
    idx = tokens()
    with torch.no_grad():
        assert torch.allclose(model("flex")(idx), model("sdpa")(idx), atol=1e-4)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_a_document_does_not_see_the_one_before_it(backend):
    idx = tokens()
    changed = idx.clone()
    changed[0, 1:20] = torch.randint(1, 50, (19,))  # rewrite the first document of row 0
    gpt = model(backend)
    with torch.no_grad():
        before, after = gpt(idx), gpt(changed)
    assert torch.allclose(before[0, 20:], after[0, 20:], atol=1e-5)  # later documents are untouched
    assert not torch.allclose(before[0, 1:20], after[0, 1:20])
    without_mask = model(backend, doc_mask=False)
    with torch.no_grad():
        assert not torch.allclose(without_mask(idx)[0, 20:], without_mask(changed)[0, 20:])


def test_doc_mask_needs_the_bos_id():
    with pytest.raises(ConfigError, match="--doc_mask needs the BOS id"):
        train_gpt.GPT(Config(depth=1, model_dim=16, head_dim=16, seq_len=8, doc_mask=True), 64)


def test_compiled_flex_model_trains_without_graph_breaks_or_recompiles_as_documents_move(monkeypatch):
    """The default GPU path (torch.compile + FlexAttention + sliding windows + document mask), traced on the CPU:
    forward and backward agree with eager SDPA, in one graph, however the document boundaries move."""
    from torch._dynamo.utils import counters
    import torch.nn.attention.flex_attention as flex
    # FlexAttention refuses gradients on CPU tensors up front; under aot_eager its backward is PyTorch's own
    # reference implementation, which runs on the CPU, so only the refusal is lifted (CUDA never has it).
    monkeypatch.setattr(flex, "_validate_device", lambda query, key, value: None)
    torch._dynamo.reset()
    counters.clear()
    gpt = model("flex")
    assert len(set(gpt.windows)) == 2  # a short sliding window and the full one
    compiled = torch.compile(gpt, backend="aot_eager")
    for step, idx in enumerate(moving_documents(steps=3)):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            loss = compiled(idx, idx)
        loss.backward()
        grads = [p.grad.clone() for p in gpt.parameters()]
        gpt.zero_grad(set_to_none=True)
        gpt.attention_backend = "sdpa"
        expected = gpt(idx, idx)
        expected.backward()
        gpt.attention_backend = "flex"
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        for p, grad in zip(gpt.parameters(), grads):
            assert torch.allclose(grad, p.grad, atol=1e-6, rtol=1e-4)
        gpt.zero_grad(set_to_none=True)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters)
    assert counters["frames"]["total"] == 1  # compiled once: no recompile


# -----------------------------------------------------------------------------
# --compile=blocks: each block compiled on its own, the masks built outside them


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_model_compiled_block_by_block_trains_like_eager_without_graph_breaks_or_recompiles(backend, monkeypatch):
    """harness.device.compile_by_block (--compile=blocks; aot_eager here, Inductor on GPUs): the attention masks (for
    FlexAttention, create_block_mask) are made in their own compiled function and handed to the compiled blocks.
    Loss and gradients equal eager SDPA's as the documents move, in a graph per kind of block (window, value
    embedding) plus the masks' and the head's, with no graph break and no recompile after the first step."""
    from torch._dynamo.utils import counters
    import torch.nn.attention.flex_attention as flex
    monkeypatch.setattr(flex, "_validate_device", lambda query, key, value: None)  # as in the test above
    torch._dynamo.reset()
    counters.clear()
    gpt = model(backend)
    kinds = {(block.attn.window, block.attn.value_mix is not None) for block in gpt.blocks}
    compile_by_block(gpt, backend="aot_eager")
    for step, idx in enumerate(moving_documents(steps=3)):
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            loss = gpt(idx, idx)
            loss.backward()
        grads = [p.grad.clone() for p in gpt.parameters()]
        gpt.zero_grad(set_to_none=True)
        with torch.compiler.set_stance("force_eager"):  # the same module, every compiled part run eagerly
            gpt.attention_backend = "sdpa"
            expected = gpt(idx, idx)
            expected.backward()
            gpt.attention_backend = backend
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
        for p, grad in zip(gpt.parameters(), grads):
            assert torch.allclose(grad, p.grad, atol=1e-6, rtol=1e-4)
        gpt.zero_grad(set_to_none=True)
    assert len(kinds) == 2 and not counters["graph_break"], dict(counters)
    assert counters["stats"]["unique_graphs"] == len(kinds) + 2, dict(counters)  # + masks, + head and loss
    assert counters["frames"]["total"] == len(kinds) + 2  # compiled once each: no recompile


def test_blocks_compiled_apart_stay_compiled_through_evaluation_batches():
    """Every block runs Block.forward's code, so its compile cache holds a graph per kind of block for training
    and for evaluation's batches: past Dynamo's default limit of 8 it would fall back to eager, silently."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    config = Config(depth=4, model_dim=32, head_dim=16, seq_len=64, short_window=16, doc_mask=True)
    gpt = train_gpt.GPT(config, 64, bos_id=BOS)
    assert len({(block.attn.window, block.attn.value_mix is not None) for block in gpt.blocks}) == 3
    compile_by_block(gpt, backend="aot_eager")
    idx = tokens(B=4)
    gpt(idx, idx).backward()
    with torch.no_grad():
        for rows in (4, 3, 4):  # evaluation's batches, the last one shorter
            gpt(idx[:rows], idx[:rows], reduction="none")
    assert counters["frames"]["ok"] == counters["frames"]["total"] and not counters["unimplemented"], dict(counters)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_attention_runs_in_the_autocast_dtype_and_in_fp32_without_autocast(backend, monkeypatch):
    """Under autocast, rms_norm and rotary hand fp32 q and k (and value embeddings fp32 v) to attention; it casts
    them to the autocast dtype itself (fp32 FlexAttention is many times slower). Without autocast: fp32."""
    import torch.nn.attention.flex_attention as flex
    seen = []

    def spy(real):
        def call(q, k, v, *args, **kwargs):
            seen.append((q.dtype, k.dtype, v.dtype))
            return real(q, k, v, *args, **kwargs)
        return call
    if backend == "flex":
        monkeypatch.setattr(flex, "flex_attention", spy(flex.flex_attention))
    else:
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            spy(torch.nn.functional.scaled_dot_product_attention))
    gpt = model(backend)
    with torch.no_grad():
        gpt(tokens())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            gpt(tokens())
    layers = len(gpt.blocks)
    assert seen == [(torch.float32,) * 3] * layers + [(torch.bfloat16,) * 3] * layers


def prompts(count=24, seed=0):
    """CORE-like sequences: BOS, then 20 to 128 tokens, the last few scored."""
    from eval_core import Sequence
    g = torch.Generator().manual_seed(seed)
    sequences = []
    for i in range(count):
        length = int(torch.randint(20, 129, (1,), generator=g))
        ids = [BOS] + torch.randint(1, 64, (length - 1,), generator=g).tolist()
        sequences.append(Sequence(ids, length - 1 - i % 5, length, 0, i, False))
    return sequences


def test_core_scoring_with_compiled_flex_attention_equals_sdpa():
    """eval_core.py --attention=flex: FlexAttention, compiled with dynamic shapes (aot_eager here, Inductor on
    GPUs), scores CORE's padded batches of every width like the masked SDPA path, in a few graphs."""
    from torch._dynamo.utils import counters
    import eval_core
    gpt = model("sdpa", seq_len=128).eval()  # sliding window 16 and document masks
    sequences, device, autocast = prompts(), torch.device("cpu"), torch.autocast("cpu", enabled=False)

    def score(forward):
        return eval_core.score_sequences(forward, sequences, BOS, 512, 0, 1, device, autocast, 128, progress=False)
    forward, backend = eval_core.scoring_forward(gpt, "sdpa", "auto", device)
    assert forward is gpt and backend == "sdpa"
    expected = score(forward)
    torch._dynamo.reset()
    counters.clear()
    forward, backend = eval_core.scoring_forward(gpt, "flex", "true", device, compile_backend="aot_eager")
    assert backend == "flex" and gpt.attention_backend == "flex"
    got = score(forward)
    assert torch.allclose(got[:, 0], expected[:, 0], atol=1e-5) and torch.equal(got[:, 1], expected[:, 1])
    widths = {width for width in (w for _, w in eval_core.make_batches(sequences, 512, 1, 128)[0])}
    assert widths == {64, 128} and not counters["graph_break"], dict(counters)
    assert counters["stats"]["unique_graphs"] <= 2, dict(counters)  # not one per batch shape
