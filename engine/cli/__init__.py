"""`python -m engine ...`: one module per subcommand family."""
from engine.cli.main import main

__all__ = ["main"]
