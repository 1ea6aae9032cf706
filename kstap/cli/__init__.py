"""The command line: Typer only. Commands build settings and call the pipeline."""
