#!/usr/bin/env python
"""Counts, member keys, caption lengths and a contact sheet of a shard pattern.

    python data_scripts/inspect_shards.py 'shards/{00000..00009}.tar' [--sheet sheet.png]

A thin wrapper over ``vlcontrast.data.inspect`` (``vlcontrast shards inspect``).
"""

import sys

from vlcontrast import cli

if __name__ == "__main__":
    sys.exit(cli.main(["shards", "inspect", *sys.argv[1:]]))
