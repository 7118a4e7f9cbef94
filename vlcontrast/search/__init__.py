"""Text-to-image and image-to-image search over any image collection, from a checkpoint.

Data flow: a collection (shards, an ImageFolder tree, a Hugging Face dataset) -> units
(``units``) -> the checkpoint's image tower, streamed and resumable (``build``) -> per-unit
embeddings and records on disk (``layout``) -> exact or faiss nearest neighbours (``backends``)
-> records for the Python API (``engine``), the CLI, near-duplicate groups (``dedup``) and the
web page (``server``). Depends on ``models``, ``data`` and ``embed`` only, never on ``train`` or
``eval``. Nothing is imported here, so ``import vlcontrast.search`` stays cheap.
"""
