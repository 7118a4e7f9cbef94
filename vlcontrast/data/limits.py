"""What the readers accept as an image: file types and the largest size (no imports, so the
configuration reads them without importing torch or PIL)."""

# Images above this many pixels are skipped (``too_large``) from their header, before any pixel
# is decoded: a 169-megapixel PNG (just under PIL's own bomb limit) would add about 1.6 GB per
# decoding process. 50 MP keeps every photo of a 50-megapixel camera and an 8K frame (33 MP);
# img2dataset and OpenCLIP's loaders guard the same way.
MAX_PIXELS = 50_000_000

# Member extensions (shards) and file suffixes (folders) read as images, in order of preference.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
IMAGE_SUFFIXES = (*(f".{e}" for e in IMAGE_EXTENSIONS), ".bmp", ".gif", ".tif", ".tiff")

# Image files above this many bytes are skipped (``too_large``) before they are read: the
# largest 50-megapixel image a camera or scanner writes (16-bit RGBA TIFF, uncompressed) is
# 400 MB, and a shard maker holds a file's bytes in memory while it checks them.
MAX_FILE_BYTES = 512 << 20


class Oversized(bytes):
    """What a reader gives (empty bytes) for a shard member over ``MAX_FILE_BYTES``, left
    unread so that a stranger's shard cannot make each loader worker allocate gigabytes: as
    an image it is skipped as ``too_large``; anything else reads as empty."""

    def __new__(cls, size: int):
        made = super().__new__(cls, b"")
        made.size = size
        return made
