"""The ``slm`` command line. Thin: parse arguments, call task functions, print results. The commands live
in groups (data, review, servers, models, ask); this module builds the one typer app from them."""

from __future__ import annotations

import sys

import typer
from rich.markup import escape

from flows.cli import ask, data, models, servers
from flows.cli.options import Workspace, err_console, set_workspace
from flows.cli.review import review_app
from tasks.models.base_models import BaseModelError
from warehouse.db import WarehouseError

app = typer.Typer(
    help="The vertical small-model factory: rule documents to a verified, fine-tuned small model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(workspace: Workspace = None) -> None:
    set_workspace(workspace)


# Registered in the order `slm --help` has always listed them.
app.add_typer(data.config_app, name="config")
app.add_typer(review_app, name="review")
for command in (data.ingest, data.facts, data.distill, data.rows, data.gate):
    app.command()(command)
app.add_typer(data.datasets_app, name="datasets")
app.add_typer(servers.server_app, name="server")
app.command()(servers.deploy)
app.add_typer(models.golden_app, name="golden")
app.command("eval")(models.eval_command)
app.command()(models.train)
app.command("run")(models.run_pipeline)
app.command("export")(models.export_command)
app.command()(ask.ask)
app.command()(ask.chat)
app.command("serve-model")(servers.serve_model)
app.command()(servers.serve)
app.command()(servers.web)
for command in (models.models, models.promote, data.docs):
    app.command()(command)


def main() -> None:
    try:
        app()
    except (WarehouseError, BaseModelError) as exc:  # one line naming what is wrong, not a traceback
        err_console.print(f"[red]{escape(str(exc))}[/red]")
        sys.exit(2)


__all__ = ["app", "main"]
