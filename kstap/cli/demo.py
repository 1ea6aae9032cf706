import typer

from kstap.errors import ExitCode


def demo(duration: float = typer.Option(10.0, "--duration")) -> int:
    """placeholder"""
    return int(ExitCode.OK)
