"""The `gatepass` command line; its commands, flags and output shapes are a contract."""

from gatepass.cli.main import main

__all__ = ["main"]
