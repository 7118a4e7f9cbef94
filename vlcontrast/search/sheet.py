"""A PNG of a query's hits: each retrieved image with its score and caption (``vlcontrast
search --sheet``, the demo's ``query.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlcontrast.data.inspect import contact_sheet


def hits_sheet(query: str, hits: list[dict[str, Any]], index, path: str | Path) -> list[str]:
    """Draw ``hits`` of ``index`` under the title ``query``; items whose image cannot be
    read are left out, and returned, each with the reason. Captions are read back from the
    index into ``hits`` where absent."""
    examples, left_out = [], []
    for rank, hit in enumerate(hits, 1):
        if hit.get("caption") is None:
            hit["caption"] = index.record(hit["row"]).get("caption")
        try:
            data = index.image_bytes(hit["row"])[0]
        except (OSError, ValueError, KeyError) as err:
            left_out.append(f"{rank}. {err}")
            continue
        examples.append((f"{rank}. {hit['score']:.3f}", data, hit["caption"] or ""))
    columns = min(len(examples), 5) or 1
    contact_sheet(examples, path, columns=columns, title=f"query: {query}")
    return left_out
