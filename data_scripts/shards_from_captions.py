#!/usr/bin/env python
"""Shards from an image folder plus a captions table (CSV, TSV, JSONL or parquet).

    python data_scripts/shards_from_captions.py --images IMG_DIR --table captions.csv \\
        --out shards/ [--image-column image] [--caption-column caption] \\
        [--per-shard 1000] [--resize 512] [--workers 4]

A thin wrapper over ``vlcontrast.data.convert`` (``vlcontrast data captions``).
"""

import sys

from vlcontrast import cli

if __name__ == "__main__":
    sys.exit(cli.main(["data", "captions", *sys.argv[1:]]))
