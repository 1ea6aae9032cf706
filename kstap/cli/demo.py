from kstap.errors import ExitCode
import typer
def demo(duration: float = typer.Option(10.0, "--duration")) -> int:
    """placeholder"""
    return int(ExitCode.OK)
