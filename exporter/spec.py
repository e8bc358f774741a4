"""What an architecture adapter hands the shared decoder builder.

Adapters translate a family's config and state dict into these plain records;
``decoder_graph.build_decoder_graph`` turns them into the canonical ONNX graph.
Weights are torch tensors in the ``torch.nn.Linear`` convention ([out, in]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import torch

# The model's dimensions are the ones the manifest records.
from planforge.manifest import Dims as DecoderDims  # noqa: F401


@dataclass(frozen=True)
class DecoderStyle:
    """The structural choices that distinguish families."""

    norm: Literal["rms", "layer"]
    norm_eps: float
    positions: Literal["rotary", "learned"]
    activation: Literal["silu", "gelu_tanh", "gelu", "relu"]
    gated_mlp: bool
    # Per layer: the number of most recent keys each query may see (itself
    # included), or None for full causal attention.
    sliding_windows: tuple[Optional[int], ...]
    # Per layer softmax scale; None means 1/sqrt(head_dim).
    attention_scales: tuple[Optional[float], ...]
    # Granite's multipliers: x = embed * embedding_scale; x += branch * residual_scale; logits /= logits_divisor.
    embedding_scale: float = 1.0
    residual_scale: float = 1.0
    logits_divisor: float = 1.0
    # Rotary families: which layers rotate q and k (SmolLM3 leaves some without positions, "NoPE"); None: all.
    rotary_layers: Optional[tuple[bool, ...]] = None
    # Gemma 2: scores -> c * tanh(scores / c) in attention, and the same on the final logits; None: off.
    attention_softcap: Optional[float] = None
    logits_softcap: Optional[float] = None
    # "pre": x + f(Norm(x)) (every family but one); "post": Norm(x + f(x)), OPT's do_layer_norm_before=False.
    norm_position: Literal["pre", "post"] = "pre"


@dataclass
class Linear:
    """One linear layer; ``module`` is its name in the source model, ``role`` its canonical role."""

    module: str
    role: str
    weight: torch.Tensor  # (out_features, in_features)
    bias: Optional[torch.Tensor] = None


@dataclass
class Norm:
    module: str
    weight: torch.Tensor
    bias: Optional[torch.Tensor] = None


@dataclass
class LayerWeights:
    attention_module: str
    attn_norm: Norm
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    mlp_norm: Norm
    up_proj: Linear
    down_proj: Linear
    gate_proj: Optional[Linear] = None  # present when DecoderStyle.gated_mlp
    # Per-head RMSNorm of the queries and keys before rotary (Qwen3): weight (head_dim,)
    q_norm: Optional[Norm] = None
    k_norm: Optional[Norm] = None
    # Norms of each branch's output before its residual Add (Gemma 2's "sandwich" norms).
    post_attn_norm: Optional[Norm] = None
    post_mlp_norm: Optional[Norm] = None
    # The rotary table this layer reads, a key of DecoderWeights.layer_rotary (Gemma 3: local and global bases);
    # None: the model's one table.
    rotary_table: Optional[str] = None

    def linears(self) -> list[Linear]:
        order = [self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.gate_proj, self.up_proj, self.down_proj]
        return [linear for linear in order if linear is not None]


@dataclass
class DecoderWeights:
    embed_module: str
    embed_tokens: torch.Tensor  # (vocab, hidden)
    layers: list[LayerWeights]
    final_norm: Optional[Norm]  # None: no norm after the blocks (OPT's post-norm variants)
    lm_head: Linear  # weight (vocab, hidden); ``tied`` when it is embed_tokens
    tied_lm_head: bool
    position_embeddings: Optional[torch.Tensor] = None  # (max_positions, hidden), learned positions
    position_module: str = ""
    rotary_cos: Optional[torch.Tensor] = None  # (max_seq_len, rotary_dim / 2)
    rotary_sin: Optional[torch.Tensor] = None
    layer_rotary: dict = field(default_factory=dict)  # key -> (cos, sin), each (max_seq_len, rotary_dim / 2)
    # Phi-3's longrope: (long cos, long sin, n): a step whose largest position is n or more reads these tables
    # instead of rotary_cos/sin (the short factors), as the model's rotary module switches per forward call.
    rotary_long: Optional[tuple] = None
    # A token table narrower than the blocks (OPT's word_embed_proj_dim): project_in after the lookup,
    # project_out before the head, which then reads the narrow width.
    project_in: Optional[Linear] = None
    project_out: Optional[Linear] = None
    extra: dict = field(default_factory=dict)
