#!/usr/bin/env python
"""Image-only shards from a folder of images at any depth: no captions, no labels, for the
self-supervised methods (SimCLR, MoCo, BYOL, DINO, SwAV, DenseCL, ...).

    python data_scripts/shards_from_images.py ROOT --out shards/ [--per-shard 1000] [--workers 4]

Each sample is ``{key}.jpg`` (or png, webp) and ``{key}.json`` with its path under ROOT.
A thin wrapper over ``vlcontrast.data.convert`` (``vlcontrast data images``).
"""

import sys

from vlcontrast import cli

if __name__ == "__main__":
    sys.exit(cli.main(["data", "images", *sys.argv[1:]]))
