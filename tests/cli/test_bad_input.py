"""Bad input on the command line: one line naming the problem, exit 2, no traceback, nothing written."""

import subprocess
import sys

import pytest


def planforge(*args, cwd=None, stdin=None):
    return subprocess.run([sys.executable, "-m", "planforge.cli.app", *map(str, args)], capture_output=True,
                          cwd=cwd, input=stdin, timeout=300)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    (root / "latin1.txt").write_bytes("café au lait, naïve résumé ".encode("latin-1") * 20)
    (root / "text.txt").write_text("The quick brown fox jumps over the lazy dog. " * 40)
    (root / "bool_label.jsonl").write_text('{"context": "a", "choices": ["b", "c"], "label": true}\n')
    (root / "bad_line3.jsonl").write_text('{"context": "a", "choices": ["b"], "label": 0}\n\n{"context": \n')
    (root / "empty_choice.jsonl").write_text('{"context": "a", "choices": ["", "c"], "label": 1}\n')
    (root / "list_item.jsonl").write_text('["a", "b"]\n')
    return root


CASES = {
    "run non-UTF-8 --input": (["run", "{model}", "--input", "{files}/latin1.txt"], "is not UTF-8 text"),
    "eval non-UTF-8 --ppl": (["eval", "{model}", "--ppl", "{files}/latin1.txt"], "is not UTF-8 text"),
    "optimize non-UTF-8 --calib": (["optimize", "{model}", "-o", "{out}", "--quant", "w4a4", "--calib",
                                    "{files}/latin1.txt"], "is not UTF-8 text"),
    "eval --ppl directory": (["eval", "{model}", "--ppl", "{files}"], "is a directory"),
    "eval --max-tokens -100": (["eval", "{model}", "--ppl", "{files}/text.txt", "--max-tokens", "-100"],
                               "greater than or equal to 2"),
    "eval --stride 0": (["eval", "{model}", "--ppl", "{files}/text.txt", "--stride", "0"], "--stride"),
    "eval --context past the model": (["eval", "{model}", "--ppl", "{files}/text.txt", "--context", "1024"],
                                      "longer than the 256 positions"),
    "eval --context past the source's trained positions": (
        ["eval", "{source}", "--ppl", "{files}/text.txt", "--context", "1024"], "longer than the 256 positions"),
    "eval boolean label": (["eval", "{model}", "--accuracy", "{files}/bool_label.jsonl"], "a boolean is not a label"),
    "eval bad JSON on line 3": (["eval", "{model}", "--accuracy", "{files}/bad_line3.jsonl"], "line 3: not JSON"),
    "eval empty choice": (["eval", "{model}", "--accuracy", "{files}/empty_choice.jsonl"], "non-empty str"),
    "eval list item": (["eval", "{model}", "--accuracy", "{files}/list_item.jsonl"], "line 1: need"),
    "compare --decode-steps -3": (["compare", "{model}", "{model}", "--decode-steps", "-3"], "--decode-steps"),
    "optimize --sink-tokens without --streaming": (["optimize", "{model}", "-o", "{out}", "--quant", "none",
                                                    "--sink-tokens", "8"], "add --streaming"),
    "compare prompt longer than the models": (["compare", "{model}", "{model}", "--prompt", "word " * 300],
                                              "positions, and the models hold 256"),
    "optimize too many sinks": (["optimize", "{model}", "-o", "{out}", "--streaming", "--sink-tokens", "200"],
                                "--sink-tokens 200 leaves no room"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_model, files, tmp_path):
    args, message = CASES[case]
    out = tmp_path / "out"
    source, model = tiny_model("llama")
    args = [a.format(model=model, source=source, files=files, out=out) for a in args]
    proc = planforge(*args)
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr
    assert message in stderr and "Traceback" not in stderr, stderr
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_corrupt_tokenizer_is_one_line(tiny_model, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model("llama")[1], model)
    (model / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}')
    proc = planforge("run", model, "--prompt", "hello", "--max-new-tokens", "2")
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in stderr, stderr
    assert "is not a tokenizer file the tokenizers library can read" in stderr, stderr
