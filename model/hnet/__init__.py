"""H-Net (dynamic chunking) language models for DNA, dnaHNet among them: layout DSL, Mamba-2 and attention blocks,
routing / chunk / dechunk, ratio loss. Pure PyTorch; mamba_ssm, causal-conv1d and flash-attn kernels are used on
CUDA when they import."""
from .dc import RouterOutput, ratio_loss
from .layout import num_routing_stages, parse_stack, stage_layouts
from .model import HNetLM, HNetOutput, parameter_groups

__all__ = ["HNetLM", "HNetOutput", "RouterOutput", "num_routing_stages", "parameter_groups", "parse_stack",
           "ratio_loss", "stage_layouts"]
