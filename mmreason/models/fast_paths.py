"""Faster forwards for model computations whose stock implementation is slow for what they compute; each gives the
same values up to float summation order (tests/test_fast_paths.py), and `apply_fast_paths` switches a loaded model
to all of them (`Policy.wrap`, `build_policy`).

1. The patch embedding of the Qwen vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5) is an
   `nn.Conv3d` whose kernel equals its stride, applied to inputs of exactly one kernel each ([N, C, T, P, P] ->
   [N, D, 1, 1, 1]): a matrix product of the flattened patches with the flattened kernel, at which the convolution
   kernels are slow. On a CPU, for 6,272 patches (32 crops of 224x224, a 32-wide tower), the weight gradient takes
   100 ms as a convolution and a few ms as a matrix product. `MatmulPatchConv3d` computes the product when the input
   is one kernel per row, and the convolution otherwise. It *is* an `nn.Conv3d` (a subclass swapped in place: the
   weights, the state dict, saving, deep copies and PEFT's layer checks are untouched).

2. Causal attention of many queries under an explicit mask (`block_sdpa`, the language model's attention
   implementation in place of `sdpa`, CPU tensors only). Transformers passes SDPA a boolean mask whenever a batch has
   padding, and the kernels then compute every query against every key, the causally masked half included. The
   multi-turn loss runs each trajectory's continuation (hundreds of tokens) on top of its cached prompt this way.
   `block_sdpa` splits the queries into blocks and gives each block only the keys up to the last one any of its
   queries attends to (read from the mask, so the result is exact whatever the mask), and attends grouped key/value
   heads without repeating them (SDPA's `enable_gqa`). For a 334-token continuation on a 390-token prompt, one
   layer's forward and backward take 0.76x the time. Other shapes, devices, dropout and decoding go to transformers'
   own `sdpa_attention_forward` unchanged. The name lives in the text config's `_attn_implementation`, which
   transformers never writes to disk: a saved model loads with `sdpa` as before.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

BLOCK_SDPA = "mmreason_block_sdpa"
QUERY_BLOCKS = 4  # blocks per call: more saves more masked keys, each adds a kernel launch (measured best at 4)
MIN_QUERIES = 128  # shorter query runs (decoding, short completions) gain nothing from blocks


class MatmulPatchConv3d(nn.Conv3d):
    """An `nn.Conv3d` with kernel == stride whose inputs of exactly one kernel run as one matrix product."""

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[2:]) != tuple(self.kernel_size):
            return super().forward(x)
        flat = F.linear(x.reshape(x.shape[0], -1), self.weight.reshape(self.out_channels, -1), self.bias)
        return flat.view(x.shape[0], self.out_channels, 1, 1, 1)


def _is_patch_conv(module: nn.Module) -> bool:
    """A plain Conv3d (no subclass, no grouping, padding or dilation) whose kernel equals its stride."""
    return (
        type(module) is nn.Conv3d
        and tuple(module.kernel_size) == tuple(module.stride)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and all(p == 0 for p in module.padding)  # type: ignore[union-attr]
        and all(d == 1 for d in module.dilation)
    )


def query_blocks(mask: Tensor, blocks: int = QUERY_BLOCKS) -> list[tuple[int, int, int]]:
    """(first query, end query, end key) of each query block of a boolean mask [B|1, H|1, Q, K]: every key from
    `end key` on is masked for every query of the block, in every row and head."""
    n_queries, n_keys = mask.shape[-2:]
    reach = mask.reshape(-1, n_queries, n_keys).any(0)  # [Q, K] the keys some row attends to
    last = torch.where(reach, torch.arange(1, n_keys + 1, device=mask.device), 0).amax(-1)  # [Q] last such key + 1
    size = -(-n_queries // blocks)
    starts = range(0, n_queries, size)
    ends = torch.stack([last[a : a + size].max() for a in starts]).tolist()  # one device sync
    return [(a, min(a + size, n_queries), max(int(e), 1)) for a, e in zip(starts, ends, strict=True)]


def block_sdpa(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """Transformers' attention-implementation signature: query [B, H, Q, D], key/value [B, H_kv, K, D], boolean
    mask [B|1, 1|H, Q, K] -> (output [B, Q, H, D], None). Blocked over queries as the module docstring says."""
    if (
        query.device.type != "cpu"
        or attention_mask is None
        or attention_mask.dtype != torch.bool
        or attention_mask.dim() != 4
        or query.shape[2] < MIN_QUERIES
        or dropout > 0.0
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    outs = [
        F.scaled_dot_product_attention(query[:, :, a:b], key[:, :, :end], value[:, :, :end],
                                       attn_mask=attention_mask[:, :, a:b, :end], scale=scaling, enable_gqa=gqa)
        for a, b, end in query_blocks(attention_mask)
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None


AttentionInterface.register(BLOCK_SDPA, block_sdpa)
AttentionMaskInterface.register(BLOCK_SDPA, sdpa_mask)


def _causal_sdpa_configs(model: Any) -> list[Any]:
    """The configs of the model's causal attention layers (its language model) that run transformers' sdpa."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(module, "is_causal", False) and getattr(config, "_attn_implementation", None) == "sdpa":
            configs[id(config)] = config
    return list(configs.values())


def apply_fast_paths(model: Any) -> int:
    """Switch `model`, in place, to every fast path of this module that applies to it -> how many switches."""
    count = 0
    for module in model.modules():
        if _is_patch_conv(module):
            module.__class__ = MatmulPatchConv3d
            count += 1
    for config in _causal_sdpa_configs(model):
        config._attn_implementation = BLOCK_SDPA
        count += 1
    return count
