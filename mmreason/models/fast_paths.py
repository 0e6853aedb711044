"""Faster forwards for model computations whose stock implementation is slow for what they compute; each gives the
same values up to float summation order (tests/test_fast_paths.py), and `apply_fast_paths` switches a loaded model
to all of them (`Policy.wrap`, `build_policy`, `load_checkpoint_policy`).

1. The patch embedding of the Qwen vision towers (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3-VL-MoE, Qwen3.5) is an
   `nn.Conv3d` whose kernel equals its stride, applied to inputs of exactly one kernel each ([N, C, T, P, P] ->
   [N, D, 1, 1, 1]): a matrix product of the flattened patches with the flattened kernel, at which the convolution
   kernels are slow. On a CPU, for 6,272 patches (32 crops of 224x224, a 32-wide tower), the weight gradient takes
   100 ms as a convolution and a few ms as a matrix product. `MatmulPatchConv3d` computes the product when the input
   is one kernel per row, and the convolution otherwise. It *is* an `nn.Conv3d` (a subclass swapped in place: the
   weights, the state dict, saving, deep copies and PEFT's layer checks are untouched).

2. Grouped-query attention of many queries under an explicit mask, on CPUs (`grouped_sdpa`, the language model's
   attention implementation in place of `sdpa`). Transformers repeats the key/value heads to the query heads
   (`repeat_kv`, a copy of the whole keys and values, and a sum in the backward) whenever the batch has a padding
   mask, since its CUDA kernels fall back to plain maths for a masked grouped call; the CPU kernel takes the groups
   as they are (`enable_gqa`). The multi-turn loss runs each trajectory's continuation (hundreds of tokens) on top of
   its cached prompt this way: for a 334-token continuation on a 390-token prompt (16 rows, 4 query and 2 key/value
   heads), one layer's forward and backward take 0.87x the time. Other devices, decoding (transformers already
   groups a single query) and unmasked calls go to transformers' own `sdpa_attention_forward`. The name lives in the
   text config's `_attn_implementation`, which transformers never writes to disk: a saved model loads with `sdpa`.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

GROUPED_SDPA = "mmreason_grouped_sdpa"


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


def grouped_sdpa(
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
    """Transformers' attention-implementation signature: query [B, H, Q, D], key/value [B, H_kv, K, D], mask
    [B|1, 1|H, Q, K] -> (output [B, Q, H, D], None); the key/value heads grouped, not repeated, as the module
    docstring says."""
    if (
        query.device.type != "cpu"
        or attention_mask is None
        or query.shape[2] == 1
        or key.shape[1] == query.shape[1]
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=dropout,
                                         scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)
AttentionMaskInterface.register(GROUPED_SDPA, sdpa_mask)


def _causal_configs(model: Any, implementation: str) -> list[Any]:
    """The configs of the model's causal attention layers (its language model) that run `implementation`."""
    configs = {}
    for module in model.modules():
        config = getattr(module, "config", None)
        if getattr(module, "is_causal", False) and getattr(config, "_attn_implementation", None) == implementation:
            configs[id(config)] = config
    return list(configs.values())


def apply_fast_paths(model: Any) -> int:
    """Switch `model`, in place, to every fast path of this module that applies to it -> how many switches."""
    count = 0
    for module in model.modules():
        if _is_patch_conv(module):
            module.__class__ = MatmulPatchConv3d
            count += 1
    for config in _causal_configs(model, "sdpa"):
        config._attn_implementation = GROUPED_SDPA
        count += 1
    return count


def uses_fast_paths(model: Any) -> bool:
    """Whether any fast path of this module is switched on in `model`."""
    patched = any(isinstance(m, MatmulPatchConv3d) for m in model.modules())
    return patched or bool(_causal_configs(model, GROUPED_SDPA))
