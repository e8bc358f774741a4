"""The sparsity predictor file: header, tensors, load/validate/save, and the torch forward.

A predictor is a ``safetensors`` file whose ``__metadata__["planforge_predictor"]`` holds the
JSON header (see ``PredictorHeader``). Tensors are fp32 in torch Linear layout ``[out, in]``.

- ``single`` (ShadowLLM): one MLP pair reads the layer-0 attention output of a token and scores
  every head of every layer (``heads.fc2`` out = L*H, index ``l*H + h``) and every neuron
  (``neurons.fc2`` out = L*F, index ``l*F + f``).
- ``per_layer`` (DejaVu): ``layers.{l}.*`` read the hidden state entering layer ``l`` and score
  that layer's H heads and F neurons.

Forward, for each scorer: ``z = (x - input_mean) / input_std``; ``fc2(relu(fc1(z)))``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from planforge.errors import PredictorError, PredictorMismatchError, PredictorNotFoundError
from planforge.sparsity.files import read_safetensors, save_safetensors_atomic

PREDICTOR_FORMAT = "planforge-sparsity-predictor"
PREDICTOR_VERSION = 1
METADATA_KEY = "planforge_predictor"
KINDS = ("single", "per_layer")
INPUTS = {"single": "layer0_attention_output", "per_layer": "layer_input"}


@dataclass(frozen=True)
class PredictorHeader:
    kind: str
    criterion: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    hidden_size: int
    intermediate_size: int
    head_hidden: int
    neuron_hidden: int
    input: str = ""
    format: str = PREDICTOR_FORMAT
    version: int = PREDICTOR_VERSION

    def __post_init__(self):
        if not self.input:
            object.__setattr__(self, "input", INPUTS.get(self.kind, ""))


def _scorer_shapes(prefix: str, d: int, hidden: int, out: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.fc1.weight": (hidden, d), f"{prefix}.fc1.bias": (hidden,),
            f"{prefix}.fc2.weight": (out, hidden), f"{prefix}.fc2.bias": (out,)}


def expected_shapes(h: PredictorHeader) -> dict[str, tuple[int, ...]]:
    """Every tensor name the header implies, with its shape."""
    d, L, H, F = h.hidden_size, h.num_layers, h.num_heads, h.intermediate_size
    if h.kind == "single":
        return {"input_mean": (d,), "input_std": (d,),
                **_scorer_shapes("heads", d, h.head_hidden, L * H),
                **_scorer_shapes("neurons", d, h.neuron_hidden, L * F)}
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(L):
        p = f"layers.{layer}"
        shapes.update({f"{p}.input_mean": (d,), f"{p}.input_std": (d,),
                       **_scorer_shapes(f"{p}.heads", d, h.head_hidden, H),
                       **_scorer_shapes(f"{p}.neurons", d, h.neuron_hidden, F)})
    return shapes


def _parse_header(text: str, path: Path) -> PredictorHeader:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PredictorError(f"{path}: the predictor header is not valid JSON ({exc}). Retrain it with "
                             "`planforge sparsity train-predictor`.") from None
    if not isinstance(raw, dict) or raw.get("format") != PREDICTOR_FORMAT:
        raise PredictorError(f"{path} is not a planforge sparsity predictor (header format "
                             f"{raw.get('format') if isinstance(raw, dict) else raw!r}).")
    if raw.get("version") != PREDICTOR_VERSION:
        raise PredictorError(f"{path} has predictor format version {raw.get('version')}; this planforge reads "
                             f"version {PREDICTOR_VERSION}. Retrain it with `planforge sparsity train-predictor`.")
    names = {f.name for f in fields(PredictorHeader)}
    missing = sorted(names - set(raw))
    if missing:
        raise PredictorError(f"{path}: the predictor header lacks {missing}. Retrain it.")
    header = PredictorHeader(**{k: raw[k] for k in names})
    if header.kind not in KINDS or header.input != INPUTS[header.kind]:
        raise PredictorError(f"{path}: unknown predictor kind/input {header.kind!r}/{header.input!r}; "
                             f"expected one of {dict(INPUTS)}.")
    return header


@dataclass
class Predictor:
    header: PredictorHeader
    tensors: dict[str, np.ndarray]

    def __post_init__(self):
        self.validate()

    def validate(self, source: str = "predictor") -> None:
        want = expected_shapes(self.header)
        if set(want) != set(self.tensors):
            missing, extra = sorted(set(want) - set(self.tensors)), sorted(set(self.tensors) - set(want))
            raise PredictorError(f"{source}: tensors do not match the header (missing {missing[:4]}, "
                                 f"unexpected {extra[:4]}). Retrain it with `planforge sparsity train-predictor`.")
        for name, shape in want.items():
            if tuple(self.tensors[name].shape) != shape:
                raise PredictorError(f"{source}: tensor {name} has shape {tuple(self.tensors[name].shape)}, "
                                     f"the header implies {shape}. Retrain the predictor.")
            if not np.all(np.isfinite(self.tensors[name])):
                raise PredictorError(f"{source}: tensor {name} holds NaN or inf values. Retrain the predictor.")
        for name in want:
            if name.endswith("input_std") and np.any(self.tensors[name] <= 0):
                raise PredictorError(f"{source}: {name} has entries <= 0. Retrain the predictor.")

    @classmethod
    def load(cls, path) -> "Predictor":
        path = Path(path)
        meta, tensors = read_safetensors(
            path, PredictorNotFoundError(f"sparsity predictor {path} does not exist. Train one with "
                                         "`planforge sparsity train-predictor`, or pass the right path."),
            lambda exc: PredictorError(f"{path} is not a readable safetensors file ({exc}). Retrain the predictor "
                                       "with `planforge sparsity train-predictor`."))
        tensors = {k: v.astype(np.float32) for k, v in tensors.items()}
        if METADATA_KEY not in meta:
            raise PredictorError(f"{path} has no '{METADATA_KEY}' header: it is not a planforge sparsity predictor.")
        header = _parse_header(meta[METADATA_KEY], path)
        predictor = cls.__new__(cls)
        predictor.header, predictor.tensors = header, tensors
        predictor.validate(str(path))
        return predictor

    def save(self, path, dtype: str = "fp32") -> None:
        """Writes atomically; ``dtype="fp16"`` halves the file (``load`` returns fp32 either way)."""
        np_dtype = {"fp32": np.float32, "fp16": np.float16}[dtype]
        save_safetensors_atomic(Path(path), {k: v.astype(np_dtype) for k, v in self.tensors.items()},
                                {METADATA_KEY: json.dumps(asdict(self.header))})

    def check_matches(self, dims) -> None:
        """Raises PredictorMismatchError unless the predictor fits a model with ``dims`` (runtime Dims)."""
        h = self.header
        pairs = [("num_layers", h.num_layers, dims.num_layers), ("num_heads", h.num_heads, dims.num_heads),
                 ("num_kv_heads", h.num_kv_heads, dims.num_kv_heads), ("hidden_size", h.hidden_size, dims.hidden_size),
                 ("intermediate_size", h.intermediate_size, dims.intermediate_size)]
        wrong = [f"{name} {mine} vs the model's {theirs}" for name, mine, theirs in pairs if mine != theirs]
        if wrong:
            raise PredictorMismatchError(
                "the sparsity predictor was trained for another model: " + ", ".join(wrong)
                + ". Train a predictor for this model with `planforge sparsity importance` and `train-predictor`.")

    def _tensor(self, name: str, device):
        """``tensors[name]`` as a torch tensor on ``device``: a zero-copy view on CPU, else a cached copy."""
        import torch

        array = self.tensors[name]
        if torch.device(device).type == "cpu":
            return torch.from_numpy(array)
        cache = self.__dict__.setdefault("_device_tensors", {})  # load() bypasses __init__
        key = (name, str(device))
        if key not in cache or cache[key][0] is not array:  # refreshed if the array was replaced
            cache[key] = (array, torch.from_numpy(array).to(device))
        return cache[key][1]

    def _mlp(self, prefix: str, z):
        import torch

        t = {k: self._tensor(f"{prefix}.{k}", z.device) for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")}
        hidden = torch.relu(z @ t["fc1.weight"].T + t["fc1.bias"])  # (N, h)
        return hidden @ t["fc2.weight"].T + t["fc2.bias"]  # (N, out)

    def _normalize(self, prefix: str, x):
        mean = self._tensor(f"{prefix}input_mean", x.device)
        std = self._tensor(f"{prefix}input_std", x.device)
        return (x.float() - mean) / std

    def scores_torch(self, x):
        """Single kind: x (N, d) layer-0 attention outputs -> (heads (N, L, H), neurons (N, L, F)).

        The scores are on ``x``'s device (the weights are copied there once and cached).
        """
        h = self.header
        assert h.kind == "single", "scores_torch is for the single predictor; use layer_scores_torch"
        assert x.ndim == 2 and x.shape[1] == h.hidden_size, x.shape
        z = self._normalize("", x)  # (N, d)
        heads = self._mlp("heads", z).reshape(-1, h.num_layers, h.num_heads)
        neurons = self._mlp("neurons", z).reshape(-1, h.num_layers, h.intermediate_size)
        return heads, neurons

    def layer_scores_torch(self, layer: int, x):
        """Per-layer kind: x (N, d) hidden states entering ``layer`` -> (heads (N, H), neurons (N, F))."""
        assert self.header.kind == "per_layer", "layer_scores_torch is for the per_layer predictor"
        z = self._normalize(f"layers.{layer}.", x)  # (N, d)
        return self._mlp(f"layers.{layer}.heads", z), self._mlp(f"layers.{layer}.neurons", z)
