"""Neural-network ONNX ops (opset 23) in torch: Attention, RotaryEmbedding, the norms, Gelu and
(de)quantization, with the reduced-precision math done in float32 as ONNX Runtime does.

Shapes follow the ONNX spec: 3-D ``Attention``/``RotaryEmbedding`` inputs are
``(B, S, H*D)`` with the head count as an attribute, 4-D ones ``(B, H, S, D)``.
"""

from __future__ import annotations

import math

import torch

from planforge.runtime.torch_graph.ops import TORCH_DTYPES, onnx_op


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, S, H*D) -> (B, H, S, D); 4-D inputs are already per head."""
    if x.dim() == 4:
        return x
    B, S, _ = x.shape
    return x.reshape(B, S, num_heads, -1).transpose(1, 2)


@onnx_op("Attention")
def attention(q, k, v, attn_mask=None, past_key=None, past_value=None, *, q_num_heads: int = 0,
              kv_num_heads: int = 0, scale: float | None = None, is_causal: int = 0, softcap: float = 0.0,
              qk_matmul_output_mode: int = 0, softmax_precision: int = 0):
    if is_causal:
        raise NotImplementedError("Attention with is_causal=1 (planforge graphs pass an explicit mask)")
    three_d = q.dim() == 3
    qh, kh, vh = _heads(q, q_num_heads), _heads(k, kv_num_heads), _heads(v, kv_num_heads)  # (B, H, S, D)
    if past_key is not None:
        kh, vh = torch.cat([past_key, kh], dim=2), torch.cat([past_value, vh], dim=2)  # (B, Hkv, P+S, D)
    B, Hq, S, D = qh.shape
    group = Hq // kh.shape[1]
    kf = kh.float().repeat_interleave(group, dim=1)  # (B, Hq, T, D)
    vf = vh.float().repeat_interleave(group, dim=1)  # (B, Hq, T, Dv)
    scores = (qh.float() @ kf.transpose(-1, -2)) * (scale if scale else 1.0 / math.sqrt(D))  # (B, Hq, S, T)
    if softcap > 0:
        scores = softcap * torch.tanh(scores / softcap)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask.float()
    y = (scores.softmax(-1) @ vf).to(q.dtype)  # (B, Hq, S, Dv)
    if three_d:
        y = y.transpose(1, 2).reshape(B, S, -1)  # (B, S, Hq*Dv)
    return y, kh, vh


@onnx_op("RotaryEmbedding")
def rotary_embedding(x, cos_cache, sin_cache, position_ids=None, *, interleaved: int = 0, num_heads: int = 0,
                     rotary_embedding_dim: int = 0):
    if interleaved:
        raise NotImplementedError("interleaved RotaryEmbedding")
    three_d = x.dim() == 3
    xh = _heads(x, num_heads)  # (B, H, S, D)
    if position_ids is not None:
        cos, sin = cos_cache[position_ids.long()], sin_cache[position_ids.long()]  # (B, S, r/2)
    else:
        cos, sin = cos_cache, sin_cache
    half = cos.shape[-1]
    rot = 2 * half if not rotary_embedding_dim else rotary_embedding_dim
    x1, x2, rest = xh[..., :half].float(), xh[..., half:rot].float(), xh[..., rot:]
    c, s = cos.float().unsqueeze(1), sin.float().unsqueeze(1)  # (B, 1, S, r/2)
    out = torch.cat([(x1 * c - x2 * s).to(x.dtype), (x2 * c + x1 * s).to(x.dtype), rest], dim=-1)
    if three_d:
        out = out.transpose(1, 2).reshape(x.shape)
    return out


@onnx_op("RMSNormalization")
def rms_normalization(x, scale, *, axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1):
    dims = tuple(range(axis % x.dim(), x.dim()))
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + epsilon)
    return (normed * scale.float()).to(x.dtype)


@onnx_op("LayerNormalization")
def layer_normalization(x, scale, bias=None, *, axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1):
    shape = x.shape[axis % x.dim():]
    y = torch.nn.functional.layer_norm(x.float(), shape, scale.float(), None if bias is None else bias.float(),
                                       epsilon)
    return y.to(x.dtype)


@onnx_op("Gelu")
def gelu(x, *, approximate: str = "none"):
    return torch.nn.functional.gelu(x.float(), approximate=approximate).to(x.dtype)


def _broadcast_scale(param: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A per-tensor, per-axis or blocked scale (or zero point) shaped to multiply ``x``."""
    if param.dim() == 0 or param.numel() == 1:
        return param.reshape([])
    axis %= x.dim()
    if block_size:
        return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


@onnx_op("DequantizeLinear")
def dequantize_linear(x, x_scale, x_zero_point=None, *, axis: int = 1, block_size: int = 0, output_dtype: int = 0):
    scale = _broadcast_scale(x_scale, x, axis, block_size)
    values = x.float()
    if x_zero_point is not None:
        values = values - _broadcast_scale(x_zero_point, x, axis, block_size).float()
    out_dtype = TORCH_DTYPES[output_dtype] if output_dtype else x_scale.dtype
    return (values * scale.float()).to(out_dtype)


@onnx_op("QuantizeLinear")
def quantize_linear(x, y_scale, y_zero_point=None, *, axis: int = 1, block_size: int = 0, output_dtype: int = 0,
                    saturate: int = 1, precision: int = 0):
    scale = _broadcast_scale(y_scale, x, axis, block_size).float()
    dtype = y_zero_point.dtype if y_zero_point is not None else (TORCH_DTYPES[output_dtype] if output_dtype
                                                                 else torch.uint8)
    zero = 0.0 if y_zero_point is None else _broadcast_scale(y_zero_point, x, axis, block_size).float()
    info = torch.iinfo(dtype)
    q = torch.round(x.float() / scale) + zero  # round half to even, as ONNX
    return q.clamp(info.min, info.max).to(dtype)
