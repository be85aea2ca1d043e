"""The `grpctunnel` command: a Typer app over a small library (reflection, invoke, render)."""
