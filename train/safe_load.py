"""Loading a checkpoint must not run code from it.

A Nucleotron checkpoint holds no pickle of its own (RNG states are safetensors, trainer state is JSON), but the
engine's files may: PyTorch's distributed-checkpoint reader unpickles `.metadata`, and megatron-core's
dist_checkpointing `torch.load`s `common.pt`. While a checkpoint loads, this module

- replaces the pickle module that torch.distributed.checkpoint's file reader uses with one whose unpickler resolves
  only the metadata classes of torch.distributed.checkpoint, torch.Size, dtypes and layouts (anything else, such as
  `os.system` or `builtins.eval`, is refused with an error naming the file), and
- forces `weights_only=True` on megatron's `torch.load` of common state, whatever the environment says;
- for DeepSpeed's files (dnaHNet), forces `weights_only=True` on its reader's torch.load, allowing only the few
  DeepSpeed classes they hold.

What a hostile checkpoint can still do: hold wrong weights, or huge tensors that exhaust memory. What it cannot do:
execute code while it is loaded.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import pickle
import types

import torch

from .checkpoint import CheckpointError

_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.planner",
                "torch.distributed.checkpoint.filesystem")
_EXACT = {("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
          ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice")}


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint file asks the unpickler for something that is not checkpoint metadata."""


def _allowed(module: str, name: str):
    if (module, name) in _EXACT:
        return getattr(importlib.import_module(module), name)
    if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, torch.memory_format)):
        return getattr(torch, name)
    if module in _DCP_MODULES:
        obj = getattr(importlib.import_module(module), name, None)
        if isinstance(obj, type) and obj.__module__ == module:   # metadata dataclasses and enums, no functions
            return obj
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, refused: list):
        super().__init__(file)
        self.source, self.refused = source, refused

    def find_class(self, module, name):
        obj = _allowed(module, name)
        if obj is None:
            self.refused.append(UnsafeCheckpointError(
                f"{self.source} asks to load {module}.{name}, which is not checkpoint metadata; refusing to load it "
                f"(a checkpoint from an untrusted source can run code through pickle). Use a checkpoint you wrote "
                f"yourself"))
            raise self.refused[-1]
        return obj


def restricted_pickle(source: str, refused: list) -> types.ModuleType:
    """A stand-in for the `pickle` module whose load/loads only build checkpoint metadata (refusals are appended to
    `refused`: torch.distributed.checkpoint wraps errors of its reader threads in its own exception)."""
    shim = types.ModuleType("pickle")
    shim.__dict__.update({k: getattr(pickle, k) for k in dir(pickle) if not k.startswith("__")})
    shim.load = lambda file, **kwargs: _RestrictedUnpickler(file, source, refused).load()
    shim.loads = lambda data, **kwargs: _RestrictedUnpickler(io.BytesIO(data), source, refused).load()
    return shim


@contextlib.contextmanager
def restricted_checkpoint_loading(directory: str):
    """While loading `directory`: restricted unpickling of DCP metadata, weights-only torch.load of common state."""
    from megatron.core.dist_checkpointing.strategies import common
    from torch.distributed.checkpoint import filesystem

    real_pickle, real_torch = filesystem.pickle, common.torch
    refused: list = []
    filesystem.pickle = restricted_pickle(f"{directory}/.metadata", refused)
    weights_only_torch = types.ModuleType("torch")
    weights_only_torch.__dict__.update(real_torch.__dict__)
    weights_only_torch.load = lambda *args, **kwargs: real_torch.load(*args, **{**kwargs, "weights_only": True})
    common.torch = weights_only_torch
    try:
        yield
    except BaseException:   # torch.distributed.checkpoint's CheckpointException is a BaseException
        if refused:
            raise refused[0] from None
        raise
    finally:
        filesystem.pickle, common.torch = real_pickle, real_torch


@contextlib.contextmanager
def deepspeed_weights_only_loading():
    """DeepSpeed's checkpoint reader calls torch.load(weights_only=False). While it loads, torch.load is forced to
    weights_only=True, with only the few DeepSpeed classes its files hold allowed: a checkpoint cannot run code."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    original = torch.load

    def weights_only_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = weights_only_load
    try:
        with torch.serialization.safe_globals([LossScaler, ZeroStageEnum, fragment_address]):
            yield
    finally:
        torch.load = original
