"""``python -m vlcontrast.cli`` (what torchrun and accelerate launch run)."""

import sys

from vlcontrast.cli import main

sys.exit(main())
