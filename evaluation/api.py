"""``evaluate``: perplexity and accuracy of one model, with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from planforge.errors import InvalidGenerationConfigError, InvalidPromptError
from planforge.evaluation.accuracy import accuracy as multiple_choice_accuracy
from planforge.evaluation.accuracy import load_items
from planforge.evaluation.perplexity import perplexity, stream_perplexity
from planforge.evaluation.scorers import scorer_for
from planforge.tokenizer import Tokenizer, read_text


def evaluate(model: Path, ppl_text: Optional[Path], accuracy_set: Optional[Path], context: Optional[int] = None,
             stride: Optional[int] = None, max_tokens: Optional[int] = None, backend: Optional[str] = None,
             device: str = "cpu", show_progress: bool = False, stream: bool = False) -> dict:
    scorer = scorer_for(Path(model), backend, device)
    if stream and not hasattr(scorer, "stream_logprobs"):
        raise InvalidPromptError("--stream scores a compiled model's KV cache token by token; give a directory "
                                 "written by `planforge export` or `planforge optimize`.")
    tokenizer = Tokenizer(model)
    if context is not None and context > scorer.context_length and not stream:
        raise InvalidGenerationConfigError(
            f"--context {context} is longer than the {scorer.context_length} positions {model} was trained or "
            f"exported for; scores past them mean nothing. Use --context <= {scorer.context_length} (or --stream "
            "with a model optimized with --streaming).")
    context = context or scorer.context_length
    result: dict = {"model": str(model), "scorer": scorer.name, "context": context}
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), disable=not show_progress)
    with progress:
        if ppl_text is not None:
            path = Path(ppl_text)
            ids = np.array(tokenizer.encode(read_text(path, "--ppl")), dtype=np.int64)[:max_tokens]
            if len(ids) < 2:
                raise InvalidPromptError(f"--ppl {path} has fewer than 2 tokens.")
            task = progress.add_task("perplexity", total=None)
            if stream:
                logprobs = scorer.stream_logprobs(ids, on_step=lambda i, n: progress.update(task, completed=i, total=n))
                res = stream_perplexity(logprobs, segment=context)
                result.update(ppl=round(res.perplexity, 4), nll=round(res.nll, 6), tokens=res.tokens, mode="stream",
                              segment_ppl=res.segment_perplexities, streaming=scorer.backend.manifest.streaming)
            else:
                res = perplexity(ids, scorer.token_logprobs, context, stride,
                                 on_window=lambda i, n: progress.update(task, completed=i, total=n))
                result.update(ppl=round(res.perplexity, 4), nll=round(res.nll, 6), tokens=res.tokens,
                              windows=res.windows, stride=stride or context)
        if accuracy_set is not None:
            items = load_items(accuracy_set)
            task = progress.add_task("accuracy", total=len(items))
            res = multiple_choice_accuracy(items, tokenizer.encode, scorer.continuation_logprobs,
                                           on_item=lambda i, n: progress.update(task, completed=i))
            result.update(accuracy=round(res.accuracy, 4), accuracy_items=res.items)
    return result
