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
# plugin ops (build --target torch), or that plugin graph prepared for TensorRT with its engine beside it
# (build --target tensorrt).
PORTABLE = "portable"
TARGETS = (PORTABLE, "onnxruntime", "torch", "tensorrt")


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
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise CompiledModelError(f"dims.{name} is {value!r}; it must be a positive integer")
        if self.num_heads % self.num_kv_heads:
            raise CompiledModelError(f"dims.num_heads {self.num_heads} is not a multiple of dims.num_kv_heads "
                                     f"{self.num_kv_heads}")


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
    # Set by `build --target tensorrt`: the engine file, the TensorRT version and GPU it was built for, its
    # plugins' forms and optimization profiles (runtime/tensorrt_engine.py).
    tensorrt: Optional[dict] = None
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
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or not isinstance(data.get("dims"), dict):
                raise CompiledModelError(f"{path} is not a planforge manifest (a JSON object with dims). "
                                         "Re-export the model.")
            if data.get("format_version") != constants.FORMAT_VERSION:
                raise CompiledModelError(
                    f"{path} has format_version {data.get('format_version')}, this planforge reads "
                    f"{constants.FORMAT_VERSION}. Re-export the model with this planforge version."
                )
            data["dims"] = Dims(**data["dims"])
            return cls(**data)
        except CompiledModelError as exc:
            if str(exc).startswith(str(path)):
                raise
            raise CompiledModelError(f"{path} is corrupt: {exc}. Re-export the model.") from None
        except (ValueError, TypeError, KeyError) as exc:  # bad JSON or UTF-8, unknown or missing fields
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


def check_graph_inputs(manifest: Manifest, graph_inputs: dict, where: Path) -> None:
    """Refuses a manifest whose I/O contract is not the graph's (an edited planforge.json): the input
    names, and the fixed dims of each input, as ``{name: [dim or None, ...]}`` from the loaded graph."""
    expected = {entry["name"]: entry["shape"] for entry in manifest.io.get("inputs", [])}
    if set(expected) != set(graph_inputs):
        extra, missing = sorted(set(graph_inputs) - set(expected)), sorted(set(expected) - set(graph_inputs))
        raise CompiledModelError(
            f"{where}/{constants.MANIFEST_FILE} does not describe its {constants.MODEL_FILE}: the graph has inputs "
            f"{extra[:3] or 'none'} the manifest lacks, and lacks {missing[:3] or 'none'}. Re-export the model.")
    d = manifest.dims
    keys = [dims for name, dims in graph_inputs.items() if name.endswith(".key")]
    if len(keys) != d.num_layers or any(k[1] not in (None, d.num_kv_heads) or k[3] not in (None, d.head_dim)
                                        for k in keys):
        raise CompiledModelError(
            f"{where}/{constants.MANIFEST_FILE} gives {d.num_layers} layers of {d.num_kv_heads} KV heads x "
            f"{d.head_dim}; the graph's cache inputs are {len(keys)} of {keys[0][1] if keys else '?'} x "
            f"{keys[0][3] if keys else '?'}. Re-export the model.")
    for name, dims in graph_inputs.items():
        for declared, actual in zip(expected[name], dims):
            if isinstance(declared, int) and isinstance(actual, int) and declared != actual:
                raise CompiledModelError(
                    f"{where}/{constants.MANIFEST_FILE} gives {name} the shape {expected[name]}, the graph "
                    f"{list(dims)}. Re-export the model.")


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
