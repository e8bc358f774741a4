"""planforge plugins: the plugin ops a lowered graph may use, with their contracts."""

from __future__ import annotations

from typing import Annotated

import typer

NAME = "plugins"


def command(
    details: Annotated[bool, typer.Option("--details/--summary", help="Also list every input, output and attribute with its dtypes, shape and default.")] = True,
):
    """List the planforge plugin ops (domain planforge): version, inputs, outputs, attributes, and the backends that run each."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from planforge.plugins.registry import opset_version, plugin_ops

    console = Console()
    table = Table(title=f"planforge plugin ops (opset planforge {opset_version()})", show_lines=details)
    for column in ("op", "version", "inputs", "outputs", "attributes", "backends"):
        table.add_column(column, overflow="fold")
    for key, op in plugin_ops().items():
        s = op.schema
        tensors = lambda specs: "\n".join(  # noqa: E731
            f"{t.name}{'?' if t.optional else ''} {t.shape} {'|'.join(t.dtypes)}" if details else t.name for t in specs)
        attributes = "\n".join(f"{a.name}: {a.type} = {a.default}" for a in s.attributes) or "-"
        aliases = "".join(f"\n({out} aliases {inp})" for out, inp in s.aliases)
        cells = (key, str(s.version), tensors(s.inputs), tensors(s.outputs) + aliases, attributes, ", ".join(op.backends))
        table.add_row(*map(escape, cells))  # shapes like [B, d] are not rich markup
    console.print(table)
