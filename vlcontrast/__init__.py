"""vlcontrast: contrastive representation learning (CLIP and friends), exact across ranks.

Importing the package has no side effects; the data flow is the folder order:
``data`` (shards -> batches) -> ``models`` (towers -> (B, D) embeddings) -> ``losses`` ->
``objectives`` (batch -> {"loss", "metrics"}) -> ``train`` (loop, checkpoints, logs);
``eval`` depends only on ``models`` plus the batched ``eval.embed`` helpers.
"""

__version__ = "0.1.0"
