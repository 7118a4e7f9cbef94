#!/usr/bin/env python
"""Shards from an ImageFolder tree (root/CLASS/IMAGE), captions from templates.

    python data_scripts/shards_from_imagefolder.py ROOT --out shards/ \\
        [--templates "a photo of a {}." "a picture of a {}."] [--per-shard 1000] [--workers 4]

Also writes each label as ``{key}.cls`` and ``classes.json``, for zero-shot evaluation.
A thin wrapper over ``vlcontrast.data.convert`` (``vlcontrast data imagefolder``).
"""

import sys

from vlcontrast import cli

if __name__ == "__main__":
    sys.exit(cli.main(["data", "imagefolder", *sys.argv[1:]]))
