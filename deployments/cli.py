"""The ``metalflow`` command."""
from __future__ import annotations

import typer

from lab.cli import app as lab_app

app = typer.Typer(help="metalflow: bare-metal provisioning for Apache CloudStack, on Prefect.",
                  no_args_is_help=True)
app.add_typer(lab_app, name="lab")


if __name__ == "__main__":
    app()
