"""FLOPs per token are counted from the model (harness/trace.py: a forward and backward on the meta device), so an
architecture change needs no formula: the count equals torch's own count of a real forward and backward, a sliding
window saves exactly its share of attention, and the baseline presets keep the numbers of the hand formula they
had before."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import harness.trace
import train_gpt
from harness.trace import trace
from tests.helpers import config_of, traced_flops_per_token

VOCAB = 4096  # the tiny preset's tokenizer's


def tiny_model(*argv):
    config = config_of("--preset=tiny", *argv)
    torch.manual_seed(0)
    return config, train_gpt.GPT(config, VOCAB, bos_id=0)


def attention_flops(model, seq_len):
    """The attention part of the count, by the convention: each query against the keys of its window, 12 FLOPs
    (forward and backward of QK^T and of the weighted sum of V) per query, key and channel of a head."""
    return sum(12 * block.attn.heads * block.attn.head_dim * min(window, seq_len)
               for block, window in zip(model.blocks, model.windows))


@pytest.mark.parametrize("argv", [(), ("--depth=3", "--value_embeds=false"), ("--doc_mask=true",)],
                         ids=["tiny", "depth 3 without value embeddings", "document mask"])
def test_the_count_equals_torchs_flop_counter_on_a_real_forward_and_backward(argv):
    """All attention full (window_pattern=L), where what the kernel computes is what the convention counts: trace's
    FLOPs per token (meta tensors) are FlopCounterMode's of a real CPU forward and backward of 2 rows, divided by
    the tokens. SDPA runs its math kernel, whose matmuls the counter sees (its fused CPU kernel has no FLOP count)."""
    config, model = tiny_model("--window_pattern=L", *argv)
    idx = torch.randint(1, VOCAB, (2, config.seq_len))
    idx[:, 0] = idx[1, 50] = 0  # documents (token 0 is BOS here), for the document mask
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(idx).float().sum().backward()
    assert counter.get_total_flops() > 0 and counter.get_total_flops() % idx.numel() == 0
    assert trace(model, config.seq_len)[0] == counter.get_total_flops() // idx.numel()


@pytest.mark.parametrize("pattern, short_window", [("SSSL", 32), ("SL", 1), ("S", 100), ("SL", 500)])
def test_a_sliding_window_saves_exactly_its_share_of_attention(pattern, short_window):
    """The count with windows differs from the all-full one by 12 x heads x head_dim x (min(window, T) - T) per
    layer; a window at least T long saves nothing."""
    full_config, full = tiny_model("--depth=4", "--window_pattern=L")
    config, model = tiny_model("--depth=4", f"--window_pattern={pattern}", f"--short_window={short_window}")
    T = config.seq_len
    saved = attention_flops(model, T) - attention_flops(full, T)
    assert (saved == 0) == (short_window >= T)
    assert saved == sum(12 * block.attn.heads * block.attn.head_dim * (min(window, T) - T)
                        for block, window in zip(model.blocks, model.windows))
    assert trace(model, T)[0] - trace(full, T)[0] == saved


def test_flops_per_token_is_the_count_of_the_recipes_model():
    """harness.trace.flops_per_token (bench and records count with it) is trace's count of the recipe's model."""
    config, model = tiny_model("--depth=3")
    assert harness.trace.flops_per_token(train_gpt, config, VOCAB) == trace(model, config.seq_len)[0]


@pytest.mark.baseline
@pytest.mark.parametrize("preset, vocab, flops", [("tiny", 4096, 2_285_568), ("gpt2-core", 32768, 4_775_557_391),
                                                  ("gpt2-small-fineweb", 50257, 840_499_200)])
def test_the_baseline_presets_count_what_the_hand_formula_counted(preset, vocab, flops):
    """6 x (matmul parameters, the head at its padded vocab) + 12 x heads x head_dim x window per layer, as the hand
    formula of train_gpt.py before the count came from the model. gpt2-core (nanochat's recipe) counted 4,775,215,104
    before: its 12 value gates [12, 12] and smear gate [1, 24] add 6 x 1,752, and its 18 short windows one key each
    (FA3's (512, 0) sees 513) add 18 x 12 x 12 x 128: 4,775,557,392; the smear's gate skips the first position,
    which the whole FLOPs' integer division by the tokens makes 1 less."""
    assert traced_flops_per_token(config_of(f"--preset={preset}"), vocab) == flops


@pytest.mark.baseline
def test_flops_per_token_against_a_hand_count():
    config = train_gpt.Config(depth=2, model_dim=128, head_dim=64, seq_len=256, window_pattern="SL", short_window=64)
    per_layer = 128 * 3 * 128 + 128 * 128 + 128 * 512 + 512 * 128  # qkv, proj, mlp in, mlp out
    head = 128 * 512  # vocab 500, padded to 512
    attention = 12 * 2 * 64 * 64 + 12 * 2 * 64 * 256  # 2 heads of 64; windows 64 (S) and 256 (L, the last)
    assert traced_flops_per_token(config, 500) == 6 * (2 * per_layer + head) + attention == 3_244_032
