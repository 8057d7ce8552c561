"""FOCUS summary-token context compression for Nucleotron attention models (../shared/reference/focus-hnet.md 1, 5)."""
from .adapter import FocusKVCache, FocusModel
from .layout import Layout, insert_summaries, layout_for_bases, next_base_labels
from .loss import focus_loss
from .mask import MaskSpec, dense_mask, visible

__all__ = ["FocusKVCache", "FocusModel", "Layout", "MaskSpec", "dense_mask", "focus_loss", "insert_summaries",
           "layout_for_bases", "next_base_labels", "visible"]
