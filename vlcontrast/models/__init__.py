"""Towers that turn images and token ids into L2-normalised (B, D) embeddings."""

from vlcontrast.models.clip import CLIP
from vlcontrast.models.image_tower import ImageTower
from vlcontrast.models.text_tower import TextTower

__all__ = ["CLIP", "ImageTower", "TextTower"]
