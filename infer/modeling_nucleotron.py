"""Nucleotron decoder in plain PyTorch for Hugging Face `transformers` (trust_remote_code).

This file is copied into every `nucleotron export hf` folder, so it imports only torch and transformers (and
nucleotron's k-mer kernel for CUDA tensors when nucleotron is installed). It computes what the megatron-core model
computes: pre-norm decoder, RMSNorm, RoPE (megatron's non-interleaved halves), causal attention (MHA, GQA or MLA),
SwiGLU MLP or a top-k softmax mixture of experts, and Gengram layers writing into the residual stream before
attention. Sequences are right-padded in a batch: everything is causal, so padding never changes earlier positions.

hidden_states (output_hidden_states=True): index 0 is the token embedding, index i the output of layer i; the last
entry is before the final norm.
"""
from __future__ import annotations

import math
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

try:  # nucleotron's fused Triton k-mer gather, used for CUDA tensors when nucleotron is installed
    from nucleotron.kernels import kmer_window_mean as _fused_kmer_window_mean
except ImportError:  # pragma: no cover - the exported folder used without nucleotron
    _fused_kmer_window_mean = None

ALPHABET = 5  # A, C, G, T, N


class NucleotronLMConfig(PretrainedConfig):
    model_type = "nucleotron"

    def __init__(self, vocab_size: int = 128, hidden_size: int = 64, num_hidden_layers: int = 2,
                 num_attention_heads: int = 4, num_key_value_heads: Optional[int] = None,
                 head_dim: Optional[int] = None, intermediate_size: int = 256, rms_norm_eps: float = 1e-5,
                 rope_base: float = 10000.0, attention: str = "standard", q_lora_rank: Optional[int] = None,
                 kv_lora_rank: int = 512, qk_head_dim: int = 128, qk_pos_emb_head_dim: int = 64,
                 v_head_dim: int = 128, num_experts: int = 0, num_experts_per_tok: int = 2,
                 moe_intermediate_size: Optional[int] = None, gengram_layers: Optional[List[int]] = None,
                 gengram_orders: Optional[List[int]] = None, gengram_window: Optional[int] = 21,
                 gengram_table_dim: int = 1024, gengram_conv_kernel: int = 4,
                 gengram_conv_dilation: Optional[int] = None, gengram_reset_window_at_eod: bool = False,
                 symbol_ids: Optional[List[int]] = None, max_position_embeddings: int = 8192,
                 initializer_range: float = 0.01, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.rms_norm_eps = rms_norm_eps
        self.rope_base = rope_base
        self.attention = attention
        self.q_lora_rank = q_lora_rank
        self.kv_lora_rank = kv_lora_rank
        self.qk_head_dim = qk_head_dim
        self.qk_pos_emb_head_dim = qk_pos_emb_head_dim
        self.v_head_dim = v_head_dim
        self.num_experts = num_experts
        self.num_experts_per_tok = num_experts_per_tok
        self.moe_intermediate_size = moe_intermediate_size or intermediate_size
        self.gengram_layers = list(gengram_layers or [])
        self.gengram_orders = list(gengram_orders or [1, 2, 3, 4, 5, 6])
        self.gengram_window = gengram_window
        self.gengram_table_dim = gengram_table_dim
        self.gengram_conv_kernel = gengram_conv_kernel
        self.gengram_conv_dilation = gengram_conv_dilation
        self.gengram_reset_window_at_eod = gengram_reset_window_at_eod
        self.symbol_ids = list(symbol_ids or [])  # token ids of A, C, G, T, N (-1: not in the vocabulary)
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


# ---------------------------------------------------------------- building blocks


def rope_angles(length: int, dim: int, base: float, device) -> torch.Tensor:
    """[length, dim] angles in fp32, the two halves repeated (megatron's RotaryEmbedding.get_emb)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
    freqs = torch.outer(torch.arange(length, device=device, dtype=torch.float32), inv_freq)
    return torch.cat([freqs, freqs], dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor, deinterleave: bool = False) -> torch.Tensor:
    """x [b, s, heads, dim]; MLA's rotary part is stored interleaved and de-interleaved first (as megatron does)."""
    if deinterleave:
        x = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
    cos = torch.cos(angles)[None, :, None, :].to(x.dtype)
    sin = torch.sin(angles)[None, :, None, :].to(x.dtype)
    x1, x2 = torch.chunk(x, 2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def causal_attention(q, k, v, scale: float) -> torch.Tensor:
    """q [b, s, heads, dq], k [b, s, groups, dq], v [b, s, groups, dv] -> [b, s, heads * dv]."""
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=k.shape[1] != q.shape[1])
    return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    """MHA / GQA: separate q, k, v projections (megatron's fused linear_qkv, split per group on export)."""

    def __init__(self, config: NucleotronLMConfig):
        super().__init__()
        self.heads, self.groups, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.rope_base = config.rope_base
        self.q_proj = nn.Linear(config.hidden_size, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.groups * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.groups * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.groups, self.head_dim)
        v = self.v_proj(x).view(b, s, self.groups, self.head_dim)
        angles = rope_angles(s, self.head_dim, self.rope_base, x.device)
        q, k = apply_rope(q, angles), apply_rope(k, angles)
        return self.o_proj(causal_attention(q, k, v, 1.0 / math.sqrt(self.head_dim)))


class MultiLatentAttention(nn.Module):
    """MLA (DeepSeek-V2 style, plain RoPE): low-rank q and kv, a shared rotary key part."""

    def __init__(self, config: NucleotronLMConfig):
        super().__init__()
        c = config
        self.heads, self.qk_dim, self.rope_dim, self.v_dim = (c.num_attention_heads, c.qk_head_dim,
                                                              c.qk_pos_emb_head_dim, c.v_head_dim)
        self.kv_lora_rank, self.rope_base = c.kv_lora_rank, c.rope_base
        q_out = self.heads * (self.qk_dim + self.rope_dim)
        if c.q_lora_rank is None:
            self.q_proj = nn.Linear(c.hidden_size, q_out, bias=False)
        else:
            self.q_down_proj = nn.Linear(c.hidden_size, c.q_lora_rank, bias=False)
            self.q_layernorm = nn.RMSNorm(c.q_lora_rank, eps=c.rms_norm_eps)
            self.q_up_proj = nn.Linear(c.q_lora_rank, q_out, bias=False)
        self.kv_down_proj = nn.Linear(c.hidden_size, c.kv_lora_rank + self.rope_dim, bias=False)
        self.kv_layernorm = nn.RMSNorm(c.kv_lora_rank, eps=c.rms_norm_eps)
        self.kv_up_proj = nn.Linear(c.kv_lora_rank, self.heads * (self.qk_dim + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.v_dim, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x) if hasattr(self, "q_proj") else self.q_up_proj(self.q_layernorm(self.q_down_proj(x)))
        q = q.view(b, s, self.heads, self.qk_dim + self.rope_dim)
        compressed, k_rope = torch.split(self.kv_down_proj(x), [self.kv_lora_rank, self.rope_dim], dim=-1)
        kv = self.kv_up_proj(self.kv_layernorm(compressed)).view(b, s, self.heads, self.qk_dim + self.v_dim)
        q_nope, q_rope = torch.split(q, [self.qk_dim, self.rope_dim], dim=-1)
        k_nope, v = torch.split(kv, [self.qk_dim, self.v_dim], dim=-1)
        angles = rope_angles(s, self.rope_dim, self.rope_base, x.device)
        q_rope = apply_rope(q_rope, angles, deinterleave=True)
        k_rope = apply_rope(k_rope.unsqueeze(2), angles, deinterleave=True).expand(-1, -1, self.heads, -1)
        q, k = torch.cat([q_nope, q_rope], dim=-1), torch.cat([k_nope, k_rope], dim=-1)
        scale = 1.0 / math.sqrt(self.qk_dim + self.rope_dim)
        return self.o_proj(causal_attention(q, k, v.contiguous(), scale))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, ffn_size: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, ffn_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, ffn_size, bias=False)
        self.down_proj = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MixtureOfExperts(nn.Module):
    """Router in fp32, top-k of the logits, softmax over the chosen k (megatron's default), weighted expert sum."""

    def __init__(self, config: NucleotronLMConfig):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.router = nn.Linear(config.hidden_size, config.num_experts, bias=False)
        self.experts = nn.ModuleList(SwiGLU(config.hidden_size, config.moe_intermediate_size)
                                     for _ in range(config.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        logits = F.linear(tokens.float(), self.router.weight.float())
        top_logits, top_experts = torch.topk(logits, self.top_k, dim=-1)
        probs = torch.softmax(top_logits, dim=-1).to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.nonzero(top_experts == e, as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, expert(tokens[rows]) * probs[rows, slot, None])
        return out.view_as(x)


def kmer_window_mean(input_ids: torch.Tensor, tables, codes_of_vocab: torch.Tensor, window: Optional[int],
                     orders, doc_start: Optional[torch.Tensor]) -> torch.Tensor:
    """[b, s, len(orders) * d] fp32 accumulation: for each order n, the mean of the table rows of the valid n-grams
    (all n symbols in A/C/G/T/N) ending in the last W - n + 1 positions (1 position when window is None)."""
    codes = codes_of_vocab[input_ids]
    positions = torch.arange(codes.shape[1], device=codes.device).expand_as(codes)

    def shifted(x, k, fill):
        return x if k == 0 else torch.cat([torch.full_like(x[:, :k], fill), x[:, :-k]], dim=1)

    means = []
    for order, table in zip(orders, tables):
        ids, valid = torch.zeros_like(codes), torch.ones_like(codes, dtype=torch.bool)
        for k in range(order):
            code = shifted(codes, k, -1)
            valid &= code >= 0
            ids += code.clamp(min=0) * ALPHABET ** k
        rows = table[ids].float() * valid.unsqueeze(-1)
        total = torch.zeros_like(rows)
        count = torch.zeros(codes.shape, dtype=torch.float32, device=codes.device)
        span = 1 if window is None else max(window - order + 1, 0)
        for k in range(span):
            keep = shifted(valid, k, False)
            if doc_start is not None:
                keep = keep & (positions - k >= doc_start)
            total += shifted(rows, k, 0.0) * keep.unsqueeze(-1)
            count += keep
        means.append(total / count.clamp(min=1).unsqueeze(-1))
    return torch.cat(means, dim=-1).to(tables[0].dtype)


class Gengram(nn.Module):
    """Windowed k-mer memory, RMSNorm'd scalar gate with a signed square root, causal dilated depthwise conv."""

    def __init__(self, config: NucleotronLMConfig):
        super().__init__()
        c = config
        self.orders, self.window = tuple(c.gengram_orders), c.gengram_window
        self.symbol_ids, self.vocab_size = list(c.symbol_ids), c.vocab_size
        self.eod_id = c.eos_token_id if c.gengram_reset_window_at_eod else None
        features = len(self.orders) * c.gengram_table_dim
        self.tables = nn.ParameterList(nn.Parameter(torch.zeros(ALPHABET ** n, c.gengram_table_dim))
                                       for n in self.orders)
        self.key_proj = nn.Linear(features, c.hidden_size, bias=False)
        self.value_proj = nn.Linear(features, c.hidden_size, bias=False)
        self.norm_q = nn.RMSNorm(c.hidden_size, eps=1e-5)
        self.norm_k = nn.RMSNorm(c.hidden_size, eps=1e-5)
        self.dilation = c.gengram_conv_dilation or max(self.orders)
        self.left_pad = (c.gengram_conv_kernel - 1) * self.dilation
        self.short_conv = nn.Conv1d(c.hidden_size, c.hidden_size, c.gengram_conv_kernel, dilation=self.dilation,
                                    groups=c.hidden_size, bias=False)

    def symbol_codes(self, device) -> torch.Tensor:
        codes = torch.full((self.vocab_size,), -1, dtype=torch.long, device=device)
        for code, token_id in enumerate(self.symbol_ids):
            if token_id >= 0:
                codes[token_id] = code
        return codes

    def features(self, input_ids: torch.Tensor) -> torch.Tensor:
        codes = self.symbol_codes(input_ids.device)
        doc_start = None
        if self.eod_id is not None:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
            doc_start = torch.cummax(torch.where(input_ids == self.eod_id, positions + 1, 0), dim=1).values
        if input_ids.is_cuda and _fused_kmer_window_mean is not None:
            return _fused_kmer_window_mean(input_ids, list(self.tables), codes, self.window, orders=self.orders,
                                           doc_start=doc_start)
        return kmer_window_mean(input_ids, list(self.tables), codes, self.window, self.orders, doc_start)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        memory = self.features(input_ids).to(hidden.dtype)
        key, value = self.key_proj(memory), self.value_proj(memory)
        gate = (self.norm_q(hidden) * self.norm_k(key)).sum(dim=-1, keepdim=True) / math.sqrt(hidden.shape[-1])
        alpha = torch.sigmoid(torch.sign(gate) * torch.sqrt(gate.abs().clamp(min=1e-6)))
        u = alpha * value
        conv = self.short_conv(F.pad(u.transpose(1, 2), (self.left_pad, 0))).transpose(1, 2)
        return hidden + u + F.silu(conv)


class DecoderLayer(nn.Module):
    def __init__(self, config: NucleotronLMConfig, layer_number: int):
        super().__init__()
        self.gengram = Gengram(config) if layer_number in config.gengram_layers else None
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = MultiLatentAttention(config) if config.attention == "mla" else Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MixtureOfExperts(config) if config.num_experts else SwiGLU(config.hidden_size,
                                                                              config.intermediate_size)

    def forward(self, hidden: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        if self.gengram is not None:
            hidden = self.gengram(hidden, input_ids)
        hidden = hidden + self.self_attn(self.input_layernorm(hidden))
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class NucleotronPreTrainedModel(PreTrainedModel):
    config_class = NucleotronLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    supports_gradient_checkpointing = False

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, Gengram):
            for table in module.tables:
                nn.init.normal_(table, std=std)


class NucleotronModel(NucleotronPreTrainedModel):
    def __init__(self, config: NucleotronLMConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i + 1) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, output_hidden_states: bool = False):
        hidden = self.embed_tokens(input_ids)
        states = [hidden] if output_hidden_states else None
        for layer in self.layers:
            hidden = layer(hidden, input_ids)
            if states is not None:
                states.append(hidden)
        return self.norm(hidden), (tuple(states) if states is not None else None)


def check_right_padded(attention_mask: Optional[torch.Tensor]) -> None:
    if attention_mask is not None and bool((attention_mask[:, 1:] > attention_mask[:, :-1]).any()):
        raise ValueError("attention_mask: only right padding is supported (causal model, no mask needed)")


class NucleotronForCausalLM(NucleotronPreTrainedModel, GenerationMixin):
    def __init__(self, config: NucleotronLMConfig):
        super().__init__(config)
        self.model = NucleotronModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, output_hidden_states: Optional[bool] = None,
                return_dict: Optional[bool] = None, **kwargs) -> CausalLMOutputWithPast:
        """No KV cache: generation recomputes the prefix (Gengram reads the whole window anyway)."""
        check_right_padded(attention_mask)
        hidden, states = self.model(input_ids, output_hidden_states=bool(output_hidden_states))
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=states)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}
