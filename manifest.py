"""``planforge.json``: what a compiled model is, and the I/O contract it honours.

Written by the exporter, extended by every graph pass (``passes``), read by the
runtime and its backends. It lives at the package root because every layer
reads it: the exporter and the graph passes write it without importing the
runtime. Plain JSON and dataclasses, so it imports without torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from planforge import constants
from planforge.errors import CompiledModelError

# numpy dtype name of each exported dtype, for the KV cache the runtime allocates.
KV_NUMPY_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# What model.onnx is written for: the portable standard-op graph (export, optimize --target portable),
# or a lowering of it onto one backend's own kernels (optimize --target onnxruntime), or onto planforge's
# plugin ops (build --target torch; TensorRT parses the same graph).
PORTABLE = "portable"
TARGETS = (PORTABLE, "onnxruntime", "torch")


@dataclass
class Dims:
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_seq_len: int

    def __post_init__(self):
        assert self.num_heads % self.num_kv_heads == 0, "GQA needs num_heads divisible by num_kv_heads"


@dataclass
class Manifest:
    planforge_version: str
    architecture: str
    family: str
    dtype: str
    opset: int
    dims: Dims
    sliding_windows: list[Optional[int]]
    eos_token_ids: list[int]
    pad_token_id: Optional[int]
    bos_token_id: Optional[int]
    io: dict
    linears: list[dict] = field(default_factory=list)
    source: dict = field(default_factory=dict)
    passes: list[dict] = field(default_factory=list)
    has_tokenizer: bool = False
    external_data: bool = False
    # Set by `optimize --streaming`: {"sink_tokens": S, "window": W, "cache_slots": S + W}.
    streaming: Optional[dict] = None
    # Set by a lowering pass: the backend model.onnx is lowered for (PORTABLE: standard ops only).
    target: str = PORTABLE
    # Set by the plugin lowering: {"planforge::Name": version} of every plugin op model.onnx uses.
    plugin_ops: dict = field(default_factory=dict)
    format_version: int = constants.FORMAT_VERSION

    def save(self, directory: Path) -> None:
        path = Path(directory) / constants.MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> "Manifest":
        path = Path(directory) / constants.MANIFEST_FILE
        if not Path(directory).is_dir():
            raise CompiledModelError(f"{directory} is not a directory. Pass the output directory of `planforge export`.")
        if not path.is_file():
            raise CompiledModelError(
                f"{directory} has no {constants.MANIFEST_FILE}: it is not a planforge compiled model. "
                f"Create one with `planforge export MODEL -o {directory}`."
            )
        try:
            data = json.loads(path.read_text())
            if data.get("format_version") != constants.FORMAT_VERSION:
                raise CompiledModelError(
                    f"{path} has format_version {data.get('format_version')}, this planforge reads "
                    f"{constants.FORMAT_VERSION}. Re-export the model with this planforge version."
                )
            data["dims"] = Dims(**data["dims"])
            return cls(**data)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise CompiledModelError(f"{path} is corrupt ({exc}). Re-export the model.") from None

    def set_streaming(self, settings: dict) -> None:
        """Records a sink + rolling-window cache: the KV tensors then hold at most S + W positions."""
        self.streaming = dict(settings)
        slots = settings["cache_slots"]
        for entry in self.io["inputs"] + self.io["outputs"]:
            if entry["name"].endswith((".key", ".value")):  # past_key_values.i.* and present.i.*
                entry["shape"][2] = f"min({entry['shape'][2]}, {slots})"
        self.io["streaming"] = (
            f"present KV keeps the first {settings['sink_tokens']} tokens (sinks) and the last {settings['window']}; "
            "keys are cached before RotaryEmbedding; position_ids stay absolute (used only for a model's own window)")

    @property
    def kv_numpy_dtype(self) -> str:
        return KV_NUMPY_DTYPES[self.dtype]


def model_file_bytes(directory: Path) -> int:
    """Size of a compiled model's graph and weights: model.onnx plus its external data, if any."""
    files = [Path(directory) / constants.MODEL_FILE, Path(directory) / constants.EXTERNAL_DATA_FILE]
    return sum(f.stat().st_size for f in files if f.is_file())


def io_contract(dims: Dims, dtype: str) -> dict:
    """The ORT-GenAI-style I/O of the exported graph, as recorded in the manifest."""
    kv_in = ["batch", dims.num_kv_heads, "past_sequence", dims.head_dim]
    kv_out = ["batch", dims.num_kv_heads, "total_sequence", dims.head_dim]
    inputs = [
        {"name": constants.INPUT_IDS, "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": constants.ATTENTION_MASK, "dtype": "int64", "shape": ["batch", "total_sequence"]},
        {"name": constants.POSITION_IDS, "dtype": "int64", "shape": ["batch", "sequence"]},
    ]
    outputs = [{"name": constants.LOGITS, "dtype": "fp32", "shape": ["batch", "sequence", dims.vocab_size]}]
    for i in range(dims.num_layers):
        for past, present in ((constants.past_key(i), constants.present_key(i)),
                              (constants.past_value(i), constants.present_value(i))):
            inputs.append({"name": past, "dtype": dtype, "shape": kv_in})
            outputs.append({"name": present, "dtype": dtype, "shape": kv_out})
    return {"inputs": inputs, "outputs": outputs}
