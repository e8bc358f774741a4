"""Trains sparsity predictors on an importance file and reports held-out Spearman correlation.

- ``single`` (ShadowLLM): one predictor reads the layer-0 attention output and scores every head
  and neuron of every layer: Linear(d, h1)-ReLU-Linear(h1, L*H) and Linear(d, h2)-ReLU-Linear(h2, L*F).
- ``per_layer`` (DejaVu): one such pair per layer, reading the hidden state entering the layer.

Targets are normalized per layer as ``log1p(importance / mean_l)``, with ``mean_l`` the layer's
mean importance over the training tokens: importance magnitudes differ by orders of magnitude
across layers and are heavy-tailed within one, so raw MSE would be dominated by a few layers and a
few outlier tokens. The transform is monotonic, so it keeps every ranking the top-k uses.

The split is by calibration window: the last ``holdout`` fraction of windows (at least one) is
never trained on. Spearman is computed per held-out token across a layer's heads (or neurons),
then averaged over tokens: that is the ranking the per-token top-k relies on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from planforge.errors import ImportanceFileError
from planforge.sparsity.importance import Importance
from planforge.sparsity.predictor import Predictor, PredictorHeader


@dataclass(frozen=True)
class TrainOptions:
    kind: str = "single"
    head_hidden: int = 128
    neuron_hidden: int = 128
    epochs: int = 10
    batch_size: int = 256
    lr: float = 2e-3
    seed: int = 0
    holdout: float = 0.1


@dataclass
class TrainResult:
    predictor: Predictor
    spearman_heads: list[float]  # per layer, mean over held-out tokens
    spearman_neurons: list[float]
    train_tokens: int
    heldout_tokens: int


def spearman_rows(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation of (N, n) arrays -> (N,) (ties broken by order)."""
    def ranks(a):
        r = np.empty_like(a, dtype=np.float64)
        np.put_along_axis(r, np.argsort(a, axis=-1, kind="stable"), np.arange(a.shape[-1], dtype=np.float64)[None], -1)
        return r - r.mean(-1, keepdims=True)
    rp, rt = ranks(pred), ranks(true)
    denom = np.sqrt((rp ** 2).sum(-1) * (rt ** 2).sum(-1))
    return np.where(denom > 0, (rp * rt).sum(-1) / np.where(denom > 0, denom, 1), 0.0)


def _normalize_targets(y: np.ndarray, train: np.ndarray) -> np.ndarray:
    """y (N, L, n) -> log1p(y / per-layer mean over training tokens)."""
    mean = y[train].mean(axis=(0, 2), keepdims=True)  # (1, L, 1)
    return np.log1p(y / np.maximum(mean, 1e-30)).astype(np.float32)


def _split(window: np.ndarray, holdout: float) -> tuple[np.ndarray, np.ndarray]:
    windows = np.unique(window)
    if len(windows) < 2:
        raise ImportanceFileError("the importance file holds one calibration window; training needs at least 2 "
                                  "(one is held out). Recompute it with more --samples.")
    held = windows[-max(1, int(round(len(windows) * holdout))):]
    test = np.isin(window, held)
    return ~test, test


def _fit(x: np.ndarray, targets: list[np.ndarray], hiddens: list[int], options: TrainOptions,
         on_epoch: Callable[[], None]) -> tuple[dict[str, np.ndarray], list]:
    """Trains one Linear-ReLU-Linear per target on normalized x; returns tensors and the torch modules."""
    import torch

    g = torch.Generator().manual_seed(options.seed)
    torch.manual_seed(options.seed)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0).astype(np.float32)
    z = torch.from_numpy((x - mean) / std).float()  # (N, d)
    ys = [torch.from_numpy(t.reshape(len(t), -1)) for t in targets]  # (N, out)
    nets = [torch.nn.Sequential(torch.nn.Linear(z.shape[1], h), torch.nn.ReLU(), torch.nn.Linear(h, y.shape[1]))
            for h, y in zip(hiddens, ys)]
    for net, y in zip(nets, ys):
        with torch.no_grad():
            net[2].bias.copy_(y.mean(0))  # start from the mean ranking
    opt = torch.optim.Adam([p for net in nets for p in net.parameters()], lr=options.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, options.epochs))
    for _ in range(options.epochs):
        for idx in torch.randperm(len(z), generator=g).split(options.batch_size):
            loss = sum(torch.nn.functional.mse_loss(net(z[idx]), y[idx]) for net, y in zip(nets, ys))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        on_epoch()
    tensors = {"input_mean": mean.astype(np.float32), "input_std": std}
    for name, net in zip(("heads", "neurons"), nets):
        for i, key in ((0, "fc1"), (2, "fc2")):
            tensors[f"{name}.{key}.weight"] = net[i].weight.detach().numpy().copy()
            tensors[f"{name}.{key}.bias"] = net[i].bias.detach().numpy().copy()
    return tensors, nets


def train_predictor(importance: Importance, options: TrainOptions,
                    on_epoch: Callable[[], None] = lambda: None) -> TrainResult:
    """Importance -> trained predictor and held-out Spearman per layer."""
    h, t = importance.header, importance.tensors
    train, test = _split(t["window"], options.holdout)
    heads, neurons = _normalize_targets(t["heads"], train), _normalize_targets(t["neurons"], train)
    header = PredictorHeader(kind=options.kind, criterion=h.criterion, num_layers=h.num_layers, num_heads=h.num_heads,
                             num_kv_heads=h.num_kv_heads, hidden_size=h.hidden_size,
                             intermediate_size=h.intermediate_size, head_hidden=options.head_hidden,
                             neuron_hidden=options.neuron_hidden)
    hiddens = [options.head_hidden, options.neuron_hidden]
    tensors: dict[str, np.ndarray] = {}
    if options.kind == "single":
        x = t["layer0_attention_output"]
        tensors, _ = _fit(x[train], [heads[train], neurons[train]], hiddens, options, on_epoch)
    else:
        for layer in range(h.num_layers):
            x = t["layer_inputs"][:, layer]
            part, _ = _fit(x[train], [heads[train, layer], neurons[train, layer]], hiddens, options, on_epoch)
            tensors.update({f"layers.{layer}.{k}": v for k, v in part.items()})
    predictor = Predictor(header, tensors)
    rho_h, rho_n = heldout_spearman(predictor, importance, test)
    return TrainResult(predictor, rho_h, rho_n, int(train.sum()), int(test.sum()))


def predict_importance(predictor: Predictor, importance: Importance, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicted scores for the selected tokens -> (heads (N, L, H), neurons (N, L, F))."""
    import torch

    t = importance.tensors
    with torch.no_grad():
        if predictor.header.kind == "single":
            heads, neurons = predictor.scores_torch(torch.from_numpy(t["layer0_attention_output"][rows]))
            return heads.numpy(), neurons.numpy()
        parts = [predictor.layer_scores_torch(l, torch.from_numpy(t["layer_inputs"][rows, l]))
                 for l in range(predictor.header.num_layers)]
    return np.stack([p[0].numpy() for p in parts], 1), np.stack([p[1].numpy() for p in parts], 1)


def heldout_spearman(predictor: Predictor, importance: Importance, test: np.ndarray) -> tuple[list[float], list[float]]:
    heads, neurons = predict_importance(predictor, importance, test)
    true_h, true_n = importance.tensors["heads"][test], importance.tensors["neurons"][test]
    rho = lambda p, y: [float(spearman_rows(p[:, l], y[:, l]).mean()) for l in range(p.shape[1])]  # noqa: E731
    return rho(heads, true_h), rho(neurons, true_n)


def run_training(importance_file, output, kind: str = "single", head_hidden: int = 128, neuron_hidden: int = 128,
                 epochs: int = 10, lr: float = 2e-3, holdout: float = 0.1, seed: int = 0, fp16: bool = False,
                 force: bool = False, show_progress: bool = False) -> TrainResult:
    """The `planforge sparsity train-predictor` command: validates, trains, prints Spearman, writes atomically."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from planforge.errors import InvalidSparsityError
    from planforge.sparsity.files import check_output_file
    from planforge.sparsity.importance import load_importance
    from planforge.sparsity.predictor import KINDS

    output = check_output_file(output, force)
    if kind not in KINDS:
        raise InvalidSparsityError(f"unknown predictor kind {kind!r}; choose single or per_layer.")
    if min(head_hidden, neuron_hidden, epochs) < 1 or lr <= 0 or not 0 < holdout < 1:
        raise InvalidSparsityError(f"need --head-hidden, --neuron-hidden, --epochs >= 1, --lr > 0 and 0 < --holdout < 1; "
                                   f"got {head_hidden}, {neuron_hidden}, {epochs}, {lr}, {holdout}.")
    importance = load_importance(importance_file)
    options = TrainOptions(kind=kind, head_hidden=head_hidden, neuron_hidden=neuron_hidden, epochs=epochs, lr=lr,
                           seed=seed, holdout=holdout)
    fits = 1 if kind == "single" else importance.header.num_layers
    progress = Progress(TextColumn(f"[bold]train[/] {kind} predictor"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not show_progress)
    with progress:
        task = progress.add_task("epochs", total=epochs * fits)
        result = train_predictor(importance, options, on_epoch=lambda: progress.advance(task))
    result.predictor.save(output, dtype="fp16" if fp16 else "fp32")
    table = Table(title=f"held-out Spearman ({result.heldout_tokens} tokens; trained on {result.train_tokens})")
    for column in ("layer", "heads", "neurons"):
        table.add_column(column, justify="right")
    for layer, (rh, rn) in enumerate(zip(result.spearman_heads, result.spearman_neurons)):
        table.add_row(str(layer), f"{rh:.3f}", f"{rn:.3f}")
    table.add_row("mean", f"{np.mean(result.spearman_heads):.3f}", f"{np.mean(result.spearman_neurons):.3f}")
    Console().print(table)
    print(f"wrote {output}")
    return result
