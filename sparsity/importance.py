"""Per-token importance of every attention head and MLP neuron, and the predictors' inputs.

Each calibration window of ``seq_len`` tokens gets one forward and one backward pass of the
transformers model in fp32. The loss is the window's summed next-token cross-entropy. Every
head's attention output (before ``o_proj``) and every neuron's ``act(gate) * up`` (before
``down_proj``) is multiplied by a gate fixed at 1; the gradient of the loss w.r.t. that gate at
token t is ``sum_d a_d * g_d`` for a head and ``a * g`` for a neuron, where ``a`` is the
activation and ``g = dL/da``. That is the first-order change of the loss when the masked model
zeroes that head/neuron at that token, so one backward gives every token's labels:

- ``plainact`` (ShadowLLM): ``|sum_d a*g|`` per head, ``|a*g|`` per neuron. BRIEF's neuron form
  ``|W ⊙ dL/dW|`` sums over tokens (dL/dW is a sum over tokens), so it has no per-token value;
  ``|a*g|`` is the per-token first-order estimate of exactly what masking the neuron does.
- ``l2`` (DejaVu): activation magnitude, ``||a||_2`` over the head's dims, ``|a|`` per neuron.
- ``fisher``: ``(sum_d a*g)^2`` per head, ``(a*g)^2`` per neuron.

The last token of a window predicts nothing inside it, so its gradient is 0; it is dropped.

Importance file (safetensors, ``__metadata__["planforge_importance"]`` = JSON header with the
model dims, criterion, samples, seq_len), N = windows * (seq_len - 1) tokens:
  ``layer0_attention_output`` (N, d)  the single predictor's input (layer 0's o_proj output)
  ``layer_inputs``            (N, L, d) hidden state entering each layer (per_layer input)
  ``heads``                   (N, L, H) importance per q head
  ``neurons``                 (N, L, F) importance per MLP neuron
  ``window``                  (N,) int64, the window each token came from (for held-out splits)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from planforge.errors import CalibrationDataError, ImportanceFileError, TokenizerMissingError
from planforge.sparsity.files import check_output_file, read_safetensors, save_safetensors_atomic

log = logging.getLogger(__name__)

CRITERIA = ("plainact", "l2", "fisher")
IMPORTANCE_FORMAT = "planforge-sparsity-importance"
METADATA_KEY = "planforge_importance"


@dataclass(frozen=True)
class ImportanceHeader:
    criterion: str
    model: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    hidden_size: int
    intermediate_size: int
    windows: int
    seq_len: int
    format: str = IMPORTANCE_FORMAT
    version: int = 1


@dataclass
class Importance:
    header: ImportanceHeader
    tensors: dict[str, np.ndarray]


def _reduce(criterion: str, a, g):
    """a, g (..., Dh) for heads or (..., 1) for neurons -> importance (...,)."""
    if criterion == "l2":
        return a.norm(dim=-1)
    first_order = (a * g).sum(-1)
    return first_order.abs() if criterion == "plainact" else first_order.square()


def window_importance(hf_model, input_ids, criterion: str, lengths=None, keep_last: bool = False) -> dict:
    """input_ids (B, S) -> tensors for B*(S-1) tokens (see the module docstring), one forward+backward.

    ``lengths`` (B,): rows are right-padded, and the loss ignores predictions past each row's end.
    ``keep_last``: return all B*S tokens (the last one of each row scores 0 by the first-order criteria).
    Runs on the model's device (``input_ids`` are moved there); the returned tensors stay there.
    """
    import torch

    from planforge.sparsity.masking import activation_hooks, model_device

    assert criterion in CRITERIA, criterion
    input_ids = torch.as_tensor(input_ids).to(model_device(hf_model))
    acts: dict[tuple[str, int], torch.Tensor] = {}
    layer_inputs: list[torch.Tensor] = []

    def keep(kind):
        def fn(layer, a):  # heads (B, S, H, Dh), neurons (B, S, F)
            a = a if kind == "heads" else a[..., None]  # (B, S, n, Dh|1)
            a.retain_grad() if a.requires_grad else None
            acts[(kind, layer)] = a
            return a if kind == "heads" else a[..., 0]
        return fn

    handles = [block.register_forward_pre_hook(lambda m, args, kw: layer_inputs.append(
        (args[0] if args else kw["hidden_states"]).detach()), with_kwargs=True) for block in hf_model.model.layers]
    captured = {}
    handles.append(hf_model.model.layers[0].self_attn.o_proj.register_forward_hook(
        lambda m, args, out: captured.update(x=out.detach())))
    try:
        with torch.enable_grad(), activation_hooks(hf_model, keep("heads"), keep("neurons")) as dims:
            logits = hf_model(input_ids=input_ids, use_cache=False).logits  # (B, S, V)
            targets = input_ids[:, 1:].clone()  # (B, S-1)
            if lengths is not None:
                positions = torch.arange(targets.shape[1], device=targets.device)[None]  # (1, S-1)
                targets[positions >= torch.as_tensor(lengths, device=targets.device)[:, None] - 1] = -100
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                                     reduction="sum", ignore_index=-100)
            loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    hf_model.zero_grad(set_to_none=True)
    B, S = input_ids.shape
    kept = S if keep_last else S - 1
    flat = lambda t: t[:, :kept].reshape(B * kept, *t.shape[2:])  # (B, S, ...) -> (B*kept, ...)  # noqa: E731
    score = lambda kind: torch.stack([flat(_reduce(criterion, acts[(kind, l)].detach(), acts[(kind, l)].grad))
                                      for l in range(dims.num_layers)], dim=1)  # (N, L, n)
    return {"layer0_attention_output": flat(captured["x"]),
            "layer_inputs": torch.stack([flat(x) for x in layer_inputs], dim=1),  # (N, L, d)
            "heads": score("heads"), "neurons": score("neurons")}


def calibration_windows(token_ids: list[int], samples: int, seq_len: int, source: str) -> np.ndarray:
    """Disjoint windows from the start of the text -> (W, seq_len) with W = min(samples, available)."""
    if seq_len < 2:
        raise CalibrationDataError(f"--seq-len must be at least 2, got {seq_len}.")
    if samples < 1:
        raise CalibrationDataError(f"--samples must be at least 1, got {samples}.")
    available = len(token_ids) // seq_len
    if available == 0:
        raise CalibrationDataError(f"{source} has {len(token_ids)} tokens, fewer than one window of --seq-len "
                                   f"{seq_len}. Give more text or a smaller --seq-len.")
    if available < samples:
        log.warning("%s holds %d windows of %d tokens; using those instead of %d.", source, available, seq_len, samples)
    count = min(samples, available)
    return np.asarray(token_ids[: count * seq_len], dtype=np.int64).reshape(count, seq_len)


def read_calibration_text(path: Path) -> str:
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"calibration text {path} does not exist. Pass a UTF-8 text file with --calib.")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationDataError(f"cannot read {path} as UTF-8 text ({exc}). Pass a plain text file.") from None
    if not text.strip():
        raise CalibrationDataError(f"calibration text {path} is empty. Pass a file with a few thousand tokens of text.")
    return text


def compute_importance(hf_model, windows: np.ndarray, criterion: str, model_name: str = "", batch: int = 4,
                       on_batch: Callable[[int, int], None] = lambda done, total: None) -> Importance:
    """windows (W, S) token ids -> Importance over W*(S-1) tokens."""
    import torch

    from planforge.sparsity.masking import sparse_dims

    if criterion not in CRITERIA:
        raise CalibrationDataError(f"unknown importance criterion {criterion!r}; choose one of {', '.join(CRITERIA)}.")
    dims, cfg = sparse_dims(hf_model), hf_model.config
    parts: dict[str, list] = {}
    for start in range(0, len(windows), batch):
        out = window_importance(hf_model, torch.from_numpy(windows[start:start + batch]), criterion)
        for key, value in out.items():
            parts.setdefault(key, []).append(value.float().cpu().numpy())
        on_batch(min(start + batch, len(windows)), len(windows))
    tensors = {key: np.concatenate(value) for key, value in parts.items()}
    W, S = windows.shape
    tensors["window"] = np.repeat(np.arange(W, dtype=np.int64), S - 1)
    header = ImportanceHeader(criterion=criterion, model=model_name, num_layers=dims.num_layers,
                              num_heads=dims.num_heads, num_kv_heads=cfg.num_key_value_heads,
                              hidden_size=cfg.hidden_size, intermediate_size=dims.intermediate_size,
                              windows=W, seq_len=S)
    return Importance(header, tensors)


def save_importance(importance: Importance, path: Path) -> None:
    save_safetensors_atomic(path, importance.tensors, {METADATA_KEY: json.dumps(asdict(importance.header))})


def load_importance(path: Path) -> Importance:
    path = Path(path)

    def unreadable(exc: Exception) -> ImportanceFileError:
        return ImportanceFileError(f"{path} is not an importance file written by `planforge sparsity importance` "
                                   f"({type(exc).__name__}: {exc}). Recompute it.")

    meta, tensors = read_safetensors(
        path, ImportanceFileError(f"importance file {path} does not exist. Write one with "
                                  "`planforge sparsity importance MODEL --calib TEXT -o FILE`."), unreadable)
    try:
        header = ImportanceHeader(**json.loads(meta[METADATA_KEY]))
    except (ValueError, KeyError, TypeError) as exc:
        raise unreadable(exc) from None
    h = header
    N = len(tensors.get("window", []))
    want = {"layer0_attention_output": (N, h.hidden_size), "layer_inputs": (N, h.num_layers, h.hidden_size),
            "heads": (N, h.num_layers, h.num_heads), "neurons": (N, h.num_layers, h.intermediate_size)}
    bad = [f"{k} {tuple(tensors[k].shape) if k in tensors else 'missing'} (want {v})"
           for k, v in want.items() if k not in tensors or tuple(tensors[k].shape) != v]
    if bad or N == 0:
        raise ImportanceFileError(f"{path}: tensors do not match the header: {', '.join(bad) or 'no tokens'}. Recompute it.")
    return Importance(header, tensors)


def importance_from_text(model: str, calib: Path, out: Path, criterion: str = "plainact", samples: int = 32,
                         seq_len: int = 256, force: bool = False, show_progress: bool = False) -> Importance:
    """The `planforge sparsity importance` command: model dir + text file -> importance file."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from planforge.exporter.loading import load_model, load_tokenizer, resolve_model_dir
    from planforge.sparsity.masking import sparse_dims

    out = check_output_file(out, force)
    text = read_calibration_text(calib)
    if criterion not in CRITERIA:
        raise CalibrationDataError(f"unknown criterion {criterion!r}; choose one of {', '.join(CRITERIA)}.")
    model_dir = resolve_model_dir(model)
    tokenizer = load_tokenizer(model_dir)
    if tokenizer is None:
        raise TokenizerMissingError(f"{model_dir} has no fast tokenizer, so the calibration text cannot be "
                                    "tokenized. Save the tokenizer next to the model (tokenizer.json).")
    hf_model = load_model(model_dir)
    sparse_dims(hf_model)
    context = getattr(hf_model.config, "max_position_embeddings", seq_len)
    if seq_len > context:
        raise CalibrationDataError(f"--seq-len {seq_len} exceeds the model's context of {context} tokens.")
    windows = calibration_windows(tokenizer.encode(text, add_special_tokens=False), samples, seq_len, str(calib))
    progress = Progress(TextColumn("[bold]importance[/] " + criterion), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not show_progress)
    with progress:
        task = progress.add_task("windows", total=len(windows))
        importance = compute_importance(hf_model, windows, criterion, model_name=str(model_dir),
                                        on_batch=lambda done, total: progress.update(task, completed=done))
    save_importance(importance, out)
    return importance
