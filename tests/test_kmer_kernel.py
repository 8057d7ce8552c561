"""The k-mer window mean: reference vs the definition, fused Triton kernel (forward and table gradients) vs reference.

Kernel tests put their tensors on the device the kernels run on: CUDA when the machine has it, else CPU, where the
Triton kernels run in the interpreter (tests/conftest.py sets TRITON_INTERPRET=1). The naive-loop checks of the
reference stay on CPU.
"""
import pytest
import torch

from nucleotron.kernels.kmer_gather import kmer_window_mean, kmer_window_mean_triton
from nucleotron.kernels.kmer_triton import INTERPRETING
from nucleotron.kernels.prefix_sum_baseline import kmer_window_mean_prefix_sum
from nucleotron.kernels.reference import document_starts, kmer_window_mean_reference

# The public Gengram token ids: A=8, C=5, G=6, T=7, N=9, EOD=12, PAD=0 in a vocabulary of 16.
A, C, G, T, N, EOD, PAD = 8, 5, 6, 7, 9, 12, 0
VOCAB_SIZE = 16
ORDERS = (1, 2, 3, 4, 5, 6)
KERNEL_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the Triton kernels run
CPU = torch.device("cpu")


def symbol_codes(device=KERNEL_DEVICE) -> torch.Tensor:
    codes = torch.full((VOCAB_SIZE,), -1, dtype=torch.long)
    for code, token in enumerate((A, C, G, T, N)):
        codes[token] = code
    return codes.to(device)


def random_tokens(b: int, s: int, seed: int, device=KERNEL_DEVICE) -> torch.Tensor:
    """Mostly bases and N, with EODs and a PAD sprinkled in (both map to -1)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.tensor([A, C, G, T, N])[torch.randint(0, 5, (b, s), generator=gen)]
    ids[torch.rand(b, s, generator=gen) < 0.06] = EOD
    ids[0, s // 2] = PAD
    return ids.to(device)


def random_tables(d: int, seed: int, orders=ORDERS, dtype=torch.float32, device=KERNEL_DEVICE):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(5 ** n, d, generator=gen).to(device=device, dtype=dtype).requires_grad_() for n in orders]


def naive_window_mean(ids, tables, codes, window, orders=ORDERS, doc_start=None):
    """The spec read literally, one position, one order and one n-gram at a time."""
    b, s = ids.shape
    d = tables[0].shape[1]
    out = torch.zeros(b, s, len(orders) * d)
    for row in range(b):
        for t in range(s):
            for i, (n, table) in enumerate(zip(orders, tables)):
                span = 1 if window is None else window - n + 1
                picked = []
                for j in range(t - span + 1, t + 1):
                    if j - n + 1 < 0 or (doc_start is not None and j < doc_start[row, t]):
                        continue
                    digits = [int(codes[ids[row, j - k]]) for k in range(n)]
                    if min(digits) < 0:
                        continue
                    picked.append(table[sum(c * 5 ** k for k, c in enumerate(digits))])
                if picked:
                    out[row, t, i * d:(i + 1) * d] = torch.stack(picked).float().mean(dim=0)
    return out


def table_grads(out, tables, grad_out):
    # A table whose order exceeds W gets no path in the reference graph: its gradient is zero.
    return torch.autograd.grad(out, tables, grad_out, allow_unused=True, materialize_grads=True)


def assert_fused_matches_reference(tables, fused, reference):
    """Forward outputs and every table gradient (for one random output gradient) agree within fp32 tolerance."""
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
    grad_out = torch.randn_like(reference)
    for got, want in zip(table_grads(fused, tables, grad_out), table_grads(reference, tables, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [None, 1, 3, 7])
@pytest.mark.parametrize("reset", [False, True])
def test_reference_equals_naive_loop(window, reset):
    ids = random_tokens(2, 24, seed=1, device=CPU)
    tables = random_tables(3, seed=2, device=CPU)
    doc_start = document_starts(ids, EOD) if reset else None
    got = kmer_window_mean_reference(ids, tables, symbol_codes(CPU), window, doc_start=doc_start)
    want = naive_window_mean(ids, tables, symbol_codes(CPU), window, doc_start=doc_start)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_reference_equals_naive_loop_for_an_order_subset():
    ids = random_tokens(1, 30, seed=3, device=CPU)
    orders = (2, 5)
    tables = random_tables(4, seed=4, orders=orders, device=CPU)
    got = kmer_window_mean_reference(ids, tables, symbol_codes(CPU), 9, orders=orders)
    want = naive_window_mean(ids, tables, symbol_codes(CPU), 9, orders=orders)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_document_starts():
    ids = torch.tensor([[A, C, EOD, G, T, EOD, EOD, A]])
    assert document_starts(ids, EOD).tolist() == [[0, 0, 3, 3, 3, 6, 7, 7]]


@pytest.mark.parametrize("window", [None, 1, 3, 21])
@pytest.mark.parametrize("reset", [False, True])
def test_fused_forward_and_table_gradients_equal_reference(window, reset):
    ids = random_tokens(2, 70, seed=10 + (window or 0))  # 70: not a multiple of any block
    tables = random_tables(12, seed=11)  # 12: not a power of two, so column masks matter
    codes = symbol_codes()
    doc_start = document_starts(ids, EOD) if reset else None
    assert_fused_matches_reference(tables, kmer_window_mean_triton(ids, tables, codes, window, doc_start=doc_start),
                                   kmer_window_mean_reference(ids, tables, codes, window, doc_start=doc_start))


def test_fused_kernel_for_an_order_subset():
    ids = random_tokens(2, 40, seed=20)
    orders = (1, 3, 4)
    tables = random_tables(8, seed=21, orders=orders)
    assert_fused_matches_reference(tables, kmer_window_mean_triton(ids, tables, symbol_codes(), 5, orders=orders),
                                   kmer_window_mean_reference(ids, tables, symbol_codes(), 5, orders=orders))


def test_entry_point_dispatch():
    """CUDA tensors, and CPU tensors under the interpreter, run the fused autograd Function; other CPU tensors
    (CPU training) run the reference."""
    ids = random_tokens(1, 16, seed=30)
    out = kmer_window_mean(ids, random_tables(4, seed=31), symbol_codes(), 21)
    assert out.shape == (1, 16, 6 * 4)
    assert type(out.grad_fn).__name__ == "KmerWindowMeanBackward"  # KERNEL_DEVICE: where the kernels run
    on_cpu = kmer_window_mean(ids.cpu(), random_tables(4, seed=31, device=CPU), symbol_codes(CPU), 21)
    assert (type(on_cpu.grad_fn).__name__ == "KmerWindowMeanBackward") == INTERPRETING


def test_bad_table_shape_is_rejected():
    tables = random_tables(4, seed=40)
    with pytest.raises(ValueError, match="order 2"):
        kmer_window_mean(random_tokens(1, 8, seed=41), [tables[0], tables[2]], symbol_codes(), 21)


def test_poisoned_output_memory_is_fully_overwritten(monkeypatch):
    """Every buffer the kernels get from torch.empty starts as NaN; no NaN may survive into the results.

    The inputs include positions with no valid n-gram (count 0: the output must be written as 0) and a
    width that leaves masked columns in the last block.
    """
    ids = random_tokens(2, 45, seed=50)
    ids[1, :6] = EOD
    tables = random_tables(10, seed=51)
    real_empty = torch.empty
    calls = []

    def nan_empty(*args, **kwargs):
        calls.append(args)
        return real_empty(*args, **kwargs).fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", nan_empty)
    fused = kmer_window_mean_triton(ids, tables, symbol_codes(), 3)
    grad_out = torch.randn(fused.shape, device=fused.device)
    grads = torch.autograd.grad(fused, tables, grad_out)
    monkeypatch.undo()

    assert calls, "the kernels no longer allocate with torch.empty: this test must poison their buffers another way"
    assert not fused.isnan().any()
    assert not any(g.isnan().any() for g in grads)
    reference = kmer_window_mean_reference(ids, tables, symbol_codes(), 3)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, table_grads(reference, tables, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want).norm() / want.norm()).item()


def test_bf16_tables_keep_bf16_accuracy_late_in_an_8k_sequence():
    """At position 8,000 of 8,192, bf16 tables give the fp32 result on the same (bf16) values to a few ulps.

    bf16 has 8 significant bits: rounding the output once costs at most 2^-9 relative (round to nearest, GPU)
    or 2^-8 (truncation: the Triton interpreter's bf16 store). The bound 2^-7 leaves room for that and nothing
    more; the public reference's bf16 prefix sums are shown to miss it by far.
    """
    gen = torch.Generator().manual_seed(60)
    ids = torch.tensor([A, C, G, T])[torch.randint(0, 4, (1, 8192), generator=gen)].to(KERNEL_DEVICE)
    tables = [t.detach().to(torch.bfloat16) for t in random_tables(16, seed=61)]
    exact = kmer_window_mean_reference(ids, [t.float() for t in tables], symbol_codes(), 21)[0, 8000]
    bound = 2.0 ** -7

    fused = kmer_window_mean_triton(ids, tables, symbol_codes(), 21)[0, 8000]
    assert fused.dtype == torch.bfloat16
    assert relative_error(fused, exact) < bound
    reference = kmer_window_mean_reference(ids, tables, symbol_codes(), 21)[0, 8000]
    assert relative_error(reference, exact) < bound
    prefix_sums = kmer_window_mean_prefix_sum(ids, tables, symbol_codes(), 21)[0, 8000]
    assert relative_error(prefix_sums, exact) > 10 * bound


@pytest.mark.gpu
def test_fused_kernel_on_gpu_equals_reference():
    ids = random_tokens(4, 1000, seed=70).cuda()
    tables = [t.detach().cuda().requires_grad_() for t in random_tables(96, seed=71)]
    codes = symbol_codes().cuda()
    fused = kmer_window_mean(ids, tables, codes, 21)
    reference = kmer_window_mean_reference(ids, tables, codes, 21)
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    grad_out = torch.randn_like(reference)
    for got, want in zip(table_grads(fused, tables, grad_out), table_grads(reference, tables, grad_out)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)

    bf16_tables = [t.detach().to(torch.bfloat16) for t in tables]
    exact = kmer_window_mean_reference(ids, [t.float() for t in bf16_tables], codes, 21)
    assert relative_error(kmer_window_mean(ids, bf16_tables, codes, 21), exact) < 2.0 ** -8
