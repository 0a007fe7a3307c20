"""qlensctl: the operator's CLI for QLens."""

__version__ = "0.1.0"
