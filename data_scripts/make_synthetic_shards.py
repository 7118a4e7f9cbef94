#!/usr/bin/env python
"""Write the demo's coloured-shapes corpus: train + held-out shards and a tokenizer.

    python data_scripts/make_synthetic_shards.py OUT_DIR [--train 12000] [--heldout 1500]

A thin wrapper over ``vlcontrast.data.synthetic.make_corpus`` (``vlcontrast data synthetic``).
"""

import sys

from vlcontrast import cli

if __name__ == "__main__":
    sys.exit(cli.main(["data", "synthetic", *sys.argv[1:]]))
