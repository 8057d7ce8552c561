"""The Gengram module: shapes, gradients, parameter count, causality and locality, init options, symbol map."""
import math

import pytest
import torch

from nucleotron.configs import GengramConfig
from nucleotron.kernels.reference import kmer_window_mean_reference
from nucleotron.model.gengram import Gengram, symbol_codes_from_vocab
from nucleotron.model.params import gengram_params

# The pack manifest's vocabulary: the public Gengram ids, padded to 128.
VOCAB = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
VOCAB_SIZE = 128
EOD = VOCAB["EOD"]
BASES = torch.tensor([VOCAB[s] for s in "ACGTN"])
HIDDEN = 32


def small_config(**overrides) -> GengramConfig:
    fields = dict(layers=[2], table_dim=8)
    fields.update(overrides)
    return GengramConfig(**fields)


def build(cfg: GengramConfig, **kwargs) -> Gengram:
    torch.manual_seed(0)
    return Gengram(cfg, HIDDEN, symbol_codes_from_vocab(VOCAB, VOCAB_SIZE), **kwargs)


def random_batch(b: int, s: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    ids = BASES[torch.randint(0, 5, (b, s), generator=gen)]
    ids[torch.rand(b, s, generator=gen) < 0.05] = EOD
    hidden = torch.randn(s, b, HIDDEN, generator=gen)
    return hidden, ids


def test_symbol_codes_from_vocab():
    codes = symbol_codes_from_vocab(VOCAB, VOCAB_SIZE)
    assert codes.shape == (VOCAB_SIZE,) and codes.dtype == torch.long
    assert [codes[VOCAB[s]].item() for s in "ACGTN"] == [0, 1, 2, 3, 4]
    assert (codes >= 0).sum() == 5 and codes[EOD] == -1 and codes[VOCAB["PAD"]] == -1


def test_symbol_codes_without_n():
    vocab = {k: v for k, v in VOCAB.items() if k != "N"}
    assert sorted(symbol_codes_from_vocab(vocab, VOCAB_SIZE).tolist())[-4:] == [0, 1, 2, 3]


def test_symbol_codes_errors():
    with pytest.raises(ValueError, match="'T'"):
        symbol_codes_from_vocab({k: v for k, v in VOCAB.items() if k != "T"}, VOCAB_SIZE)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        symbol_codes_from_vocab(VOCAB, 8)  # A = 8


def test_output_shape_gate_and_gradients_reach_every_parameter():
    module = build(small_config())
    hidden, ids = random_batch(2, 30, seed=1)
    hidden.requires_grad_()
    out = module(hidden, ids)
    assert out.shape == hidden.shape
    assert 0.0 < float(module.last_gate_mean) < 1.0
    (out * torch.randn_like(out)).sum().backward()
    for name, param in module.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert hidden.grad.abs().sum() > 0


@pytest.mark.parametrize("overrides", [{}, {"orders": [1, 2, 3], "conv_kernel": 3}, {"orders": [2, 4], "window": None}])
def test_parameter_count_matches_params_formula(overrides):
    cfg = small_config(**overrides)
    module = build(cfg)
    assert sum(p.numel() for p in module.parameters()) == gengram_params(cfg, HIDDEN)


def test_features_are_the_reference_window_mean():
    cfg = small_config(orders=[1, 3, 4], window=9)
    module = build(cfg)
    _, ids = random_batch(2, 25, seed=2)
    want = kmer_window_mean_reference(ids, list(module.tables), module.symbol_codes, 9, orders=(1, 3, 4))
    torch.testing.assert_close(module.features(ids), want, rtol=1e-5, atol=1e-6)


def test_forward_follows_the_spec_formula():
    """y = u + SiLU(conv(u)), u = sigmoid(signed_sqrt(<RMSNorm h, RMSNorm key> / sqrt(H))) * value, written out."""
    module = build(small_config())
    hidden, ids = random_batch(1, 24, seed=3)
    m = module.features(ids).transpose(0, 1)
    g = (module.norm_q(hidden) * module.norm_k(module.key_proj(m))).sum(-1, keepdim=True) / math.sqrt(HIDDEN)
    u = torch.sigmoid(torch.sign(g) * torch.sqrt(g.abs().clamp(min=1e-6))) * module.value_proj(m)
    weight = module.short_conv.conv.weight[:, 0]  # [H, 4]: tap i reaches back (3 - i) * 6 positions
    conv = torch.zeros_like(u)
    for i in range(4):
        back = (3 - i) * 6
        conv[back:] += u[: u.shape[0] - back] * weight[:, i]
    torch.testing.assert_close(module(hidden, ids), hidden + u + torch.nn.functional.silu(conv),
                               rtol=1e-5, atol=1e-5)


def test_strictly_causal_and_local():
    """Changing token p changes nothing before p; at t it changes the output iff t - 38 <= p (W 21, conv 4x6)."""
    module = build(small_config())
    s, t = 48, 45
    hidden, ids = random_batch(1, s, seed=4)
    ids = ids.repeat(4, 1)
    hidden = hidden.repeat(1, 4, 1)
    changed_at = {1: 20, 2: t - 39, 3: t - 38}  # batch row -> changed position
    for row, p in changed_at.items():
        ids[row, p] = VOCAB["A"] if ids[row, p] != VOCAB["A"] else VOCAB["C"]
    with torch.no_grad():
        out = module(hidden, ids)
    for row, p in changed_at.items():
        assert torch.equal(out[:p, row], out[:p, 0]), f"token {p} changed an earlier output"
    assert not torch.equal(out[20, 1], out[20, 0])  # a token changes its own output
    assert torch.equal(out[t, 2], out[t, 0])  # 39 back: out of reach
    assert not torch.equal(out[t, 3], out[t, 0])  # 38 back: inside the reach


def test_window_reset_at_eod():
    """With reset_window_at_eod, n-grams of the previous document leave the window of the next one."""
    _, ids = random_batch(1, 30, seed=5)
    ids = ids.repeat(2, 1)
    ids[:, 10] = EOD
    ids[1, 5] = VOCAB["A"] if ids[1, 5] != VOCAB["A"] else VOCAB["C"]  # before the EOD
    keep = build(small_config())
    reset = build(small_config(reset_window_at_eod=True), eod_id=EOD)
    with torch.no_grad():
        kept, resets = keep.features(ids), reset.features(ids)
    assert not torch.equal(kept[1, 11:], kept[0, 11:])
    assert torch.equal(resets[1, 11:], resets[0, 11:])
    with pytest.raises(ValueError, match="eod_id"):
        build(small_config(reset_window_at_eod=True))


def test_reference_init():
    module = build(small_config(table_dim=16))
    big = module.tables[-1]  # 15625 x 16
    assert abs(big.std().item() - 1.0) < 0.02
    assert module.short_conv.conv.weight.abs().sum() > 0
    bound = 1 / math.sqrt(6 * 16)  # torch's Linear default: U(+-1/sqrt(fan_in))
    assert module.key_proj.weight.abs().max() <= bound and module.key_proj.weight.std() > bound / 3


def test_engram_init():
    module = build(small_config(table_dim=16, init="engram"), init_std=0.02)
    assert abs(module.tables[-1].std().item() - 0.02) < 0.001
    assert module.short_conv.conv.weight.abs().sum() == 0
    hidden, ids = random_batch(1, 20, seed=6)
    with torch.no_grad():  # a zero conv makes the block y = u
        memory = module.features(ids).transpose(0, 1)
        value = module.value_proj(memory)
        y = module(hidden, ids) - hidden
    alpha = (y * value).sum(-1, keepdim=True) / (value * value).sum(-1, keepdim=True)  # one gate per token
    torch.testing.assert_close(y, alpha * value, rtol=1e-4, atol=1e-6)
    assert ((alpha > 0) & (alpha < 1)).all()
    with pytest.raises(ValueError, match="init"):
        build(small_config(init="xavier"))


def test_table_parameters_are_marked_for_the_optimizer():
    """Only `gengram_table` marks the tables (train/optimizer.py keys its overrides on it); no dead hooks."""
    module = build(small_config(table_lr_mult=5.0, table_weight_decay=False))
    marked = [p for p in module.parameters() if getattr(p, "gengram_table", False)]
    assert len(marked) == 6 and all(a is b for a, b in zip(marked, module.tables))
    assert not any(hasattr(p, "lr_mult") or hasattr(p, "no_weight_decay") for p in module.parameters())
    assert not any(hasattr(p, "gengram_table") for p in module.key_proj.parameters())
