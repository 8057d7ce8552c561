"""CPU mode: the few patches megatron-core 0.16.1 needs to build, run and parallelise models without CUDA (gloo).

Applied only when CUDA is absent (`apply_cpu_patches()` is a no-op on a GPU machine) so laptops and CI can smoke-test
configs, and run TP/PP/EP equivalence tests with gloo processes. Each patch names its reason. They touch private
internals, so they are pinned to the megatron-core version below; a different version fails loudly instead of
half-working. Known CPU limits (not patchable in a small module): no context parallelism (needs TransformerEngine attention), no
distributed or bf16 optimizer (hard-coded cuda type checks). Sequence parallel and MoE+TP work through
nucleotron.model.norm.RMSNorm.
"""
from __future__ import annotations

import contextlib
import importlib
import types

import torch

from .no_te_mode import apply_no_te_patches

MEGATRON_CORE_VERSION = "0.16.1"

# megatron modules whose `torch` name is swapped for a CPU-mapping proxy, and why.
PROXIED_MODULES = {
    "megatron.core.tensor_parallel.random": "RNG tracker seeds and reads torch.cuda's generator",
    "megatron.core.transformer.moe.token_dispatcher": "alltoall dispatcher makes a torch.cuda.Stream for split sizes",
    "megatron.core.transformer.moe.moe_utils": "MoE aux-loss tracker allocates with device='cuda'",
    "megatron.core.transformer.utils": "attention masks built with device='cuda'",
    "megatron.core.tensor_parallel.data": "broadcast_data sizes tensor built with device='cuda'",
    "megatron.core.pipeline_parallel.schedules": "forward_backward_* token counter built with device='cuda'",
    "megatron.core.pipeline_parallel.p2p_communication": "p2p exchange calls torch.cuda.synchronize()",
    "megatron.core.optimizer.optimizer": "loss-scale and found-inf tensors built with device='cuda'",
    "megatron.core.optimizer.clip_grads": "grad-norm reduction and clipping buffers built with device='cuda'",
    "megatron.core.utils": "local (non-apex) multi-tensor L2 norm returns a device='cuda' tensor",
    "megatron.core.distributed.param_and_grad_buffer": "grad buffers warm up with torch.zeros(device='cuda')",
    "megatron.core.dist_checkpointing.strategies.filesystem_async": "checkpoint writer calls torch.cuda.synchronize()",
}


class _NullStream:
    """One shared stand-in for every CUDA stream and event: waits and records are no-ops, and it equals itself."""

    def wait_stream(self, other):
        pass

    def synchronize(self):
        pass

    def record_event(self, event=None):
        return self  # an "event" on a null stream: synchronize()/wait() are no-ops too

    def wait(self, stream=None):
        pass


_NULL_STREAM = _NullStream()


def _on_cpu(device):
    """Map any CUDA device spec to the CPU; leave everything else alone."""
    if isinstance(device, int) or (isinstance(device, str) and device.startswith("cuda")):
        return torch.device("cpu")
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.device("cpu")
    return device


class _CpuCuda:
    """What a patched module sees as `torch.cuda`: the CPU generator, no-op sync and streams, CPU 'current device'."""

    @staticmethod
    def current_device():
        return torch.device("cpu")

    get_rng_state = staticmethod(lambda *args, **kwargs: torch.get_rng_state())
    set_rng_state = staticmethod(lambda state, *args, **kwargs: torch.set_rng_state(state))
    manual_seed = staticmethod(torch.manual_seed)
    synchronize = staticmethod(lambda *args, **kwargs: None)
    is_available = staticmethod(lambda: False)
    Stream = staticmethod(lambda *args, **kwargs: _NULL_STREAM)
    current_stream = staticmethod(lambda *args, **kwargs: _NULL_STREAM)
    stream = staticmethod(lambda *args, **kwargs: contextlib.nullcontext())

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


_TENSOR_FACTORIES = {"zeros", "ones", "empty", "full", "tensor", "arange", "empty_like", "zeros_like", "ones_like"}


class _CpuTorch(types.ModuleType):
    """Stands in for `torch` inside one megatron module: factories get device='cpu', `torch.cuda` is _CpuCuda."""

    cuda = _CpuCuda()

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        attr = getattr(torch, name)
        if name not in _TENSOR_FACTORIES:
            return attr

        def factory(*args, **kwargs):
            if "device" in kwargs:
                kwargs["device"] = _on_cpu(kwargs["device"])
            return attr(*args, **kwargs)

        return factory


_APPLIED = False


def move_to_cpu_keeping_numpy(tensor, as_numpy: bool = False, record_stream: bool = False):
    """megatron's maybe_move_tensor_to_cpu, but also turning CPU tensors into numpy when asked (gloo all-to-all
    needs Python/numpy split sizes; the original only converts tensors that were on the GPU)."""
    if torch.is_tensor(tensor) and as_numpy:
        return tensor.numpy()
    return tensor


def scale_grads_to_norm(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """megatron's clip_grad_by_total_norm_fp32 without its CUDA type assertion: grads *= max_norm / total_norm."""
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff >= 1.0:
        return
    params = [parameters] if torch.is_tensor(parameters) else parameters
    for param in params:
        grad = getattr(param, "decoupled_grad", None) if use_decoupled_grad else param.grad
        if grad is not None:
            grad.detach().mul_(clip_coeff)


def apply_cpu_patches() -> bool:
    """Patch megatron-core for CPU use; returns True when patches are (already) in place, False on a CUDA machine."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    import megatron.core

    version = megatron.core.__version__
    if version != MEGATRON_CORE_VERSION:
        raise RuntimeError(
            f"nucleotron's CPU mode patches megatron-core {MEGATRON_CORE_VERSION}, found {version}: "
            f"install megatron-core=={MEGATRON_CORE_VERSION} (pyproject pins it) or update train/cpu_mode.py")

    # ~40 call sites place buffers on torch.cuda.current_device() (scratch buffer, rotary freqs, TP all-gathers,
    # router weight...); on a CUDA-less build that call can only raise, so it names the CPU instead.
    torch.cuda.current_device = _CpuCuda.current_device
    proxy = _CpuTorch()
    for name in PROXIED_MODULES:
        importlib.import_module(name).torch = proxy

    from megatron.core.tensor_parallel import random as tp_random
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    # The RNG tracker saves/restores "the CUDA generator" through these two helpers: use the CPU generator.
    tp_random._get_cuda_rng_state = _CpuCuda.get_rng_state
    tp_random._set_cuda_rng_state = _CpuCuda.set_rng_state
    # The router's te_general_gemm and MLA's TELinear placeholder: shared with CUDA machines without TE.
    apply_no_te_patches()
    # gloo's all_to_all_single takes list/numpy split sizes; CPU tensors would stay tensors.
    moe_utils.maybe_move_tensor_to_cpu = move_to_cpu_keeping_numpy
    token_dispatcher.maybe_move_tensor_to_cpu = move_to_cpu_keeping_numpy
    # The fp32 clip asserts each grad's type string is 'torch.cuda.FloatTensor'; scale the grads directly instead.
    from megatron.core.optimizer import clip_grads, optimizer

    clip_grads.clip_grad_by_total_norm_fp32 = scale_grads_to_norm
    optimizer.clip_grad_by_total_norm_fp32 = scale_grads_to_norm
    _APPLIED = True
    return True
