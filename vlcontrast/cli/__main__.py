"""``python -m vlcontrast.cli`` (what torchrun and accelerate launch run)."""

from vlcontrast.cli import entry

entry()
