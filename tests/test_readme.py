"""The README's commands are run as written (with out/ redirected to a temporary directory)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _shell(command: str, tmp_path: Path) -> subprocess.CompletedProcess:
    command = command.replace("out/", f"{tmp_path}/out/")
    bindir = Path(sys.executable).parent
    return subprocess.run(["bash", "-c", f'export PATH="{bindir}:$PATH"; {command}'], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_main_job_and_compare_commands(tmp_path):
    commands = [line for block in _blocks("bash") for line in block.splitlines() if line.startswith("planforge ")]
    assert commands[0].startswith("planforge demo")  # the main job comes first
    assert any(c.startswith("planforge export") for c in commands)
    for command in commands:
        proc = _shell(command, tmp_path)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        if " run " in command:
            assert "tokens/s" in proc.stderr
        if command.startswith("planforge compare"):
            assert "PASSED" in proc.stdout
        if command.startswith("planforge eval"):
            assert "RESULT " in proc.stdout
        if command.startswith("planforge demo"):
            assert "onnx fp16" in proc.stdout and "perplexity" in proc.stdout
            assert "streaming (4 sinks + 252 window" in proc.stdout


def test_python_api_example(tmp_path):
    (code,) = _blocks("python")
    proc = subprocess.run([sys.executable, "-c", code.replace('"out/', f'"{tmp_path}/out/')], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
