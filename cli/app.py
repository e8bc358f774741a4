"""The ``planforge`` command: one module per subcommand, errors printed as one line with a fix."""

from __future__ import annotations

import sys

import typer

from planforge import __version__
from planforge.cli import build, compare, demo, evaluate, export, optimize, plugins, run, sparsity
from planforge.errors import PlanforgeError

app = typer.Typer(
    name="planforge",
    help="Compile Hugging Face decoder LLMs to ONNX Runtime models (and TensorRT engines), run and compare them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for module in (demo, export, optimize, build, run, compare, evaluate, plugins):
    app.command(name=module.NAME, help=module.command.__doc__)(module.command)
app.add_typer(sparsity.app, name=sparsity.NAME)


def _version(value: bool):
    if value:
        typer.echo(f"planforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the planforge version and exit.")):
    pass


def main() -> None:
    # Usage errors, --help and typer.Exit are handled by click (standalone mode, exit 2 for usage);
    # planforge's own errors become one red line and exit 2.
    from planforge.atomic import Terminated

    try:
        app()
    except PlanforgeError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except (KeyboardInterrupt, Terminated) as stop:  # outputs are atomic: whatever was half-written is gone
        signal_name = "SIGINT" if isinstance(stop, KeyboardInterrupt) else "SIGTERM"
        typer.secho(f"error: stopped by {signal_name}; no partial output was left.", fg=typer.colors.RED, err=True)
        sys.exit(130 if isinstance(stop, KeyboardInterrupt) else 143)


if __name__ == "__main__":
    main()
