"""Towers, heads and models: images and token ids -> features and L2-normalised (B, D)
embeddings, behind one contract (``forward(images=None, input_ids=None, attention_mask=None)``
returns a dict). ``load`` rebuilds a model from a checkpoint for inference."""

from vlcontrast.models.build import MODELS, build_model
from vlcontrast.models.dual import DualEncoder
from vlcontrast.models.image_only import ImageEncoder
from vlcontrast.models.image_tower import ImageTower
from vlcontrast.models.text_only import TextEncoder
from vlcontrast.models.text_tower import TextTower

__all__ = [
    "MODELS",
    "DualEncoder",
    "ImageEncoder",
    "ImageTower",
    "TextEncoder",
    "TextTower",
    "build_model",
]
