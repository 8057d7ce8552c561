"""The projected-table Gengram (key/value from E_n W^(n)T, fused gate and conv) against the module's previous math.

`previous_gengram_forward` is the Gengram forward as it was before the projected-table path: m from the fp32
reference window mean, two Linear projections, nn.RMSNorm gate, Conv1d short conv. Every output and every
parameter gradient must agree within fp32 tolerance, through both implementations of the new path: the Triton
kernels (on CUDA, or in the interpreter on CPU: tests/conftest.py) and the PyTorch path CPU training takes.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from nucleotron.configs import GengramConfig
from nucleotron.kernels.kmer_triton import INTERPRETING
from nucleotron.kernels.projected import kmer_key_value, kmer_key_value_torch, kmer_rows
from nucleotron.kernels.reference import document_starts, kmer_window_mean_reference, window_span
from nucleotron.model.gengram import Gengram, symbol_codes_from_vocab

VOCAB = {"PAD": 0, "C": 5, "G": 6, "T": 7, "A": 8, "N": 9, "EOD": 12}
VOCAB_SIZE = 16
EOD = VOCAB["EOD"]
HIDDEN = 16
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
KERNELS_RUN_HERE = DEVICE.type == "cuda" or INTERPRETING


def random_ids(b: int, s: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([VOCAB[c] for c in "ACGTN"])[torch.randint(0, 5, (b, s), generator=gen)]
    ids[torch.rand(b, s, generator=gen) < 0.08] = EOD
    ids[0, s // 3] = VOCAB["PAD"]
    return ids.to(DEVICE)


def build(orders, window, reset: bool, table_dim: int = 8) -> Gengram:
    cfg = GengramConfig(layers=[1], orders=list(orders), window=window, table_dim=table_dim,
                        reset_window_at_eod=reset)
    torch.manual_seed(0)
    module = Gengram(cfg, HIDDEN, symbol_codes_from_vocab(VOCAB, VOCAB_SIZE), eod_id=EOD if reset else None)
    with torch.no_grad():  # reference init makes the gate saturate; smaller weights keep every gradient alive
        for table in module.tables:
            table.mul_(0.5)
    return module.to(DEVICE)


def previous_gengram_forward(module: Gengram, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The module's math before the projected tables: m, Linear, nn.RMSNorm, Conv1d (single device)."""
    doc_start = document_starts(ids, EOD) if module.eod_id is not None else None
    m = kmer_window_mean_reference(ids, list(module.tables), module.symbol_codes, module.window,
                                   orders=module.orders, doc_start=doc_start).transpose(0, 1)
    key, value = module.key_proj(m), module.value_proj(m)
    gate = (module.norm_q(hidden) * module.norm_k(key)).sum(dim=-1, keepdim=True) / math.sqrt(hidden.shape[-1])
    u = torch.sigmoid(torch.sign(gate) * torch.sqrt(gate.abs().clamp(min=1e-6))) * value
    conv = module.short_conv.conv
    padded = F.pad(u.permute(1, 2, 0), (module.short_conv.left_pad, 0))
    return hidden + u + F.silu(conv(padded).permute(2, 0, 1))


def grads(out, module, hidden, grad_out):
    params = [hidden, *module.parameters()]
    return torch.autograd.grad(out, params, grad_out, allow_unused=True, materialize_grads=True)


CASES = [  # (orders, window, reset at EOD)
    ((1, 2, 3, 4, 5, 6), 21, False),
    ((1, 3, 6), 4, True),
    ((1, 3, 6), None, False),
    ((2,), 21, True),
]


@pytest.mark.parametrize("orders,window,reset", CASES)
def test_module_equals_previous_math(orders, window, reset):
    """Output, input gradient and every parameter gradient, on the path this machine trains with."""
    module = build(orders, window, reset)
    ids = random_ids(2, 45, seed=len(orders) + (window or 0))
    hidden = torch.randn(45, 2, HIDDEN, device=DEVICE, requires_grad=True)
    got, want = module(hidden, ids), previous_gengram_forward(module, hidden, ids)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(want)
    names = ["hidden"] + [name for name, _ in module.named_parameters()]
    outside = {f"tables.{i}" for i, n in enumerate(orders) if window_span(n, window) == 0}  # n > W: in no window
    for name, g, w in zip(names, grads(got, module, hidden, grad_out), grads(want, module, hidden, grad_out)):
        assert (w.abs().sum() > 0) != (name in outside), f"{name}: unexpected (non-)zero reference gradient"
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def key_value_inputs(orders, window, reset, seed):
    gen = torch.Generator().manual_seed(seed)
    ids = random_ids(2, 40, seed)
    tables = [torch.randn(5 ** n, 8, generator=gen).to(DEVICE).requires_grad_() for n in orders]
    weights = [(torch.randn(h, 8 * len(orders), generator=gen) * 0.2).to(DEVICE).requires_grad_() for h in (12, 20)]
    codes = symbol_codes_from_vocab(VOCAB, VOCAB_SIZE).to(DEVICE)
    doc_start = document_starts(ids, EOD) if reset else None
    m = kmer_window_mean_reference(ids, tables, codes, window, orders=orders, doc_start=doc_start)
    want = torch.cat([m @ w.t() for w in weights], dim=-1).transpose(0, 1)
    return ids, tables, weights, codes, doc_start, want


def assert_key_value_matches(got, want, params):
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(want)
    for g, w in zip(torch.autograd.grad(got, params, grad_out, allow_unused=True, materialize_grads=True),
                    torch.autograd.grad(want, params, grad_out, allow_unused=True, materialize_grads=True)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("orders,window,reset", CASES + [((1, 4), 3, False)])
def test_pytorch_path_equals_reference(orders, window, reset):
    """The CPU-training path (fp64 prefix sums of the unprojected rows, one projection of m); order 4 > W = 3 gets
    no window at all."""
    ids, tables, weights, codes, doc_start, want = key_value_inputs(orders, window, reset, seed=3)
    rows = kmer_rows(ids, codes, orders)
    spans = [window_span(n, window) for n in orders]
    got = kmer_key_value_torch(rows, spans, doc_start, tables, weights)
    assert_key_value_matches(got, want, [*tables, *weights])


@pytest.mark.skipif(not KERNELS_RUN_HERE, reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")
@pytest.mark.parametrize("orders,window,reset", [((1, 2, 3, 4, 5, 6), 21, True), ((2, 5), None, False)])
def test_triton_path_equals_reference(orders, window, reset):
    ids, tables, weights, codes, doc_start, want = key_value_inputs(orders, window, reset, seed=4)
    got = kmer_key_value(ids, tables, weights, codes, window, orders=orders, doc_start=doc_start)
    assert type(got.grad_fn).__name__ == "ProjectedWindowSumBackward"
    assert_key_value_matches(got, want, [*tables, *weights])


@pytest.mark.skipif(not KERNELS_RUN_HERE, reason="the Triton kernels need CUDA or TRITON_INTERPRET=1")
def test_kernel_buffers_are_fully_written(monkeypatch):
    """Every torch.empty buffer starts as garbage: NaN (outputs, counts, partial table gradients), -7 (k-mer rows,
    read as 'invalid'); none may survive."""
    orders = (1, 2, 5)
    ids, tables, weights, codes, _, want = key_value_inputs(orders, 5, False, seed=5)
    ids[1, :7] = EOD  # positions with no valid n-gram: count 0, output 0
    m = kmer_window_mean_reference(ids, tables, codes, 5, orders=orders)
    want = torch.cat([m @ w.t() for w in weights], dim=-1).transpose(0, 1)
    real_empty = torch.empty
    def poisoned_empty(*args, **kwargs):
        buffer = real_empty(*args, **kwargs)
        return buffer.fill_(float("nan") if buffer.is_floating_point() else -7)

    monkeypatch.setattr(torch, "empty", poisoned_empty)
    got = kmer_key_value(ids, tables, weights, codes, 5, orders=orders)
    grad_out = torch.randn_like(want)
    got_grads = torch.autograd.grad(got, [*tables, *weights], grad_out)
    monkeypatch.undo()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, torch.autograd.grad(want, [*tables, *weights], grad_out)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_bad_projection_weight_is_rejected():
    ids, tables, weights, codes, _, _ = key_value_inputs((1, 2), 4, False, seed=6)
    with pytest.raises(ValueError, match=r"projection weights must be \[H, 16\]"):
        kmer_key_value(ids, tables, [weights[0][:, :10]], codes, 4, orders=(1, 2))


def test_row_ids_kernel_equals_pytorch(monkeypatch):
    """The one-launch k-mer row kernel (CUDA or interpreter) and the PyTorch ops of CPU training agree."""
    from nucleotron.kernels import projected

    ids = random_ids(3, 37, seed=7)
    ids[2, 5] = VOCAB_SIZE - 1  # a token outside the alphabet
    codes = symbol_codes_from_vocab(VOCAB, VOCAB_SIZE).to(DEVICE)
    orders = (1, 3, 4, 6)
    with monkeypatch.context() as patch:
        patch.setattr(projected, "INTERPRETING", False)  # CPU training's path
        want = kmer_rows(ids.cpu(), codes.cpu(), orders)
    if KERNELS_RUN_HERE:
        from nucleotron.kernels.projected_triton import kmer_rows_triton

        got = kmer_rows_triton(ids, codes, orders, offsets=[0, 5, 130, 755])
        assert torch.equal(got.cpu(), want)
    assert want[0, 2, 5] == -1 and want[3, 2, 5:11].eq(-1).all()  # every n-gram through it is invalid
    sixes = want[3][want[3] >= 0]
    assert sixes.numel() > 0 and (sixes >= 5 + 125 + 625).all() and (sixes < 5 + 125 + 625 + 15625).all()


@pytest.mark.gpu
def test_bf16_tensor_core_paths_on_gpu():
    """bf16 on a GPU runs the 16-bit matmuls (exact 0/1 products; split fp32 gradients): bf16-level agreement
    with the fp32 reference on the same bf16 values."""
    orders = (1, 2, 3, 4, 5, 6)
    ids, tables, weights, codes, _, _ = key_value_inputs(orders, 21, False, seed=8)
    ids = random_ids(2, 700, seed=9)
    low = [p.detach().to(torch.bfloat16).requires_grad_() for p in (*tables, *weights)]
    exact = [p.detach().float().requires_grad_() for p in low]
    got = kmer_key_value(ids, low[:6], low[6:], codes, 21)
    m = kmer_window_mean_reference(ids, exact[:6], codes, 21)
    want = torch.cat([m @ w.t() for w in exact[6:]], dim=-1).transpose(0, 1)
    assert got.dtype == torch.bfloat16
    rel = lambda a, b: ((a.float() - b).norm() / b.norm()).item()  # noqa: E731
    assert rel(got, want) < 2 ** -7
    grad_out = torch.randn_like(want).to(torch.bfloat16)
    for g, w in zip(torch.autograd.grad(got, low, grad_out), torch.autograd.grad(want, exact, grad_out.float())):
        assert rel(g, w) < 2 ** -6
