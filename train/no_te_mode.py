"""megatron-core without TransformerEngine: the places where 0.16.1 assumes TE is installed, patched in one place.

A plain `pip install` on a GPU node (no TransformerEngine, no apex) and CPU mode both need these; with TE importable
nothing is touched. Each patch names its reason. They reach into megatron internals, so they are pinned to the
version below and a different one fails loudly instead of half-working.
"""
from __future__ import annotations

import functools
import importlib

MEGATRON_CORE_VERSION = "0.16.1"


@functools.lru_cache(maxsize=None)
def transformer_engine_importable() -> bool:
    """True when `transformer_engine.pytorch` imports (a broken install, e.g. a CUDA mismatch, counts as absent)."""
    try:
        importlib.import_module("transformer_engine.pytorch")
    except Exception:  # ImportError, or OSError/RuntimeError from a TE build that does not match this machine
        return False
    return True


_APPLIED = False


def apply_no_te_patches() -> bool:
    """Patch megatron-core for running without TransformerEngine; True when applied, False when TE is present."""
    global _APPLIED
    if _APPLIED:
        return True
    if transformer_engine_importable():
        return False
    import megatron.core

    version = megatron.core.__version__
    if version != MEGATRON_CORE_VERSION:
        raise RuntimeError(
            f"nucleotron's no-TransformerEngine patches target megatron-core {MEGATRON_CORE_VERSION}, found {version}: "
            f"install megatron-core=={MEGATRON_CORE_VERSION} (pyproject pins it) or update train/no_te_mode.py")
    from megatron.core.transformer import multi_latent_attention
    from megatron.core.transformer.moe import moe_utils

    # The MoE router's gating GEMM reads this module global, bound only when TE imports: NameError without it
    # (megatron bug). None sends the router to its torch matmul.
    moe_utils.te_general_gemm = None
    # megatron binds TELinear to a MagicMock placeholder when TE is absent, and MLA's
    # `isinstance(self.linear_proj, TELinear)` raises TypeError; a class nothing is an instance of keeps it False.
    if not isinstance(multi_latent_attention.TELinear, type):
        multi_latent_attention.TELinear = type("TELinearAbsent", (), {})
    _APPLIED = True
    return True
