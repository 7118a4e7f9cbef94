#!/usr/bin/env python
"""Shards from a Hugging Face ``datasets`` dataset with an image and a text column.

    python data_scripts/shards_from_hf.py NAME_OR_PATH --out shards/ [--split train] \\
        [--image-column image] [--text-column text] [--per-shard 1000] [--workers 4]

NAME_OR_PATH: a ``save_to_disk`` directory, a local dataset folder or a hub name.
A thin wrapper over ``vlcontrast.data.convert`` (``vlcontrast data hf``).
"""

import sys

from vlcontrast import cli

if __name__ == "__main__":
    sys.exit(cli.main(["data", "hf", *sys.argv[1:]]))
