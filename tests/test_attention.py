"""The attention switch: FlexAttention and scaled_dot_product_attention agree, with sliding windows and document
masks; a document mask keeps documents from seeing each other."""

import pytest
import torch

import train_gpt
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
        outputs[backend] = attention(q, k, v, masks[window], backend)
    assert torch.allclose(outputs["flex"], outputs["sdpa"], atol=1e-5)


def model(attention_backend, doc_mask=True):
    config = Config(depth=2, model_dim=32, head_dim=16, seq_len=64, short_window=16, doc_mask=doc_mask)
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
    with pytest.raises(train_gpt.ConfigError, match="--doc_mask needs the BOS id"):
        train_gpt.GPT(Config(depth=1, model_dim=16, head_dim=16, seq_len=8, doc_mask=True), 64)
