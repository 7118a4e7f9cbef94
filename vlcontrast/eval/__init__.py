"""Evaluation on top of ``models`` and the shared batched ``embed`` helpers."""
