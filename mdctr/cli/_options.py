"""Typer options shared by several commands (one definition, one help text)."""

from __future__ import annotations

import typer

OutOpt = typer.Option(..., "--out", help="Output directory (written atomically).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace --out if it exists.")
StoreOpt = typer.Option("runs/labels", "--store", envvar="MDCTR_LABEL_STORE", help="Teacher-label store directory.")
ConfigOpt = typer.Option(..., "--config", help="Pipeline config (configs/*_cadence.yaml).")

#: the values of ``--split`` (``all``: every row)
SPLITS = ("train", "valid", "test", "all")
