"""The WiSE-FT curve (Wortsman et al. 2022): zero-shot accuracy of ``(1 - alpha) A + alpha B`` at
several alphas, on one or more labelled collections, with A the zero-shot CLIP and B its
fine-tuned version (``objective.name=finetune`` keeps B a CLIP, so its zero-shot classifier is
the fine-tuned one).

The paper's finding, and what the curve shows: on the fine-tuning distribution accuracy rises
with alpha, while on shifted collections it peaks between the ends, so one alpha (0.5 in their
figure 1) keeps most of both. Each alpha's weights are made in memory
(``models/interpolate.py:interpolate_states``) and scored by the zero-shot evaluator
(``eval/zeroshot.py``) with the same classes and templates; the result is a table, a JSON and a
PNG of top-1 against alpha, one line per collection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlcontrast.eval_config import EvaluatorConfig
from vlcontrast.models.interpolate import interpolate_states
from vlcontrast.models.load import load_model

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def wiseft_curve(
    zeroshot: str | Path,
    finetuned: str | Path,
    data: list[str],
    alphas: tuple[float, ...] = DEFAULT_ALPHAS,
    classes: str = "",
    templates: list[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    workers: int = 0,
) -> dict[str, Any]:
    """``{"alphas", "data", "top1": {collection: [top-1 per alpha]}, "best": {...}}``."""
    from vlcontrast.config import apply
    from vlcontrast.eval.runner import run_evaluators

    if not data:
        raise ValueError("--data: give at least one labelled collection")
    if any(not 0 <= a <= 1 for a in alphas):
        raise ValueError(f"--alphas: every alpha must be in [0, 1], got {list(alphas)}")
    model, tokenizer, cfg = load_model(zeroshot)
    other, _, _ = load_model(finetuned)
    a_state = {k: v.clone() for k, v in model.state_dict().items()}
    b_state = other.state_dict()
    del other
    evaluators = [
        EvaluatorConfig(
            kind="zeroshot",
            name=f"data{i}",
            data=d,
            classes=classes,
            templates=list(templates or []),
        )
        for i, d in enumerate(data)
    ]
    apply(cfg, {"eval": {"batch_size": batch_size, "num_workers": workers}})
    cfg.eval.evaluators = evaluators
    top1: dict[str, list[float]] = {d: [] for d in data}
    model.to(device)
    for alpha in alphas:
        model.load_state_dict(interpolate_states(a_state, b_state, alpha))
        results = run_evaluators(model, tokenizer, cfg, device)
        for i, d in enumerate(data):
            top1[d].append(float(results[f"data{i}"]["metrics"]["top1"]))
        shown = ", ".join(f"{top1[d][-1]:.4f}" for d in data)
        print(f"alpha {alpha:.2f}: top-1 {shown}", flush=True)
    best = {d: alphas[max(range(len(alphas)), key=lambda i, d=d: top1[d][i])] for d in data}
    return {"alphas": list(alphas), "data": list(data), "top1": top1, "best_alpha": best}


def collection_name(data: str) -> str:
    """A short name of a collection: its directory's name for a shard pattern or file."""
    path = Path(data.rstrip("/"))
    if "{" in path.name or path.suffix == ".tar":
        path = path.parent
    return path.name or data


def format_curve(curve: dict[str, Any]) -> str:
    """A markdown table: one row per alpha, one column per collection."""
    names = [collection_name(d) for d in curve["data"]]
    lines = ["| alpha | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, alpha in enumerate(curve["alphas"]):
        cells = " | ".join(f"{curve['top1'][d][i]:.4f}" for d in curve["data"])
        lines.append(f"| {alpha:.2f} | {cells} |")
    return "\n".join(lines)


def save_curve_png(curve: dict[str, Any], path: str | Path) -> Path:
    """Top-1 against alpha, one line per collection, the best alpha of each marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for d in curve["data"]:
        values = curve["top1"][d]
        line = ax.plot(curve["alphas"], values, marker="o", label=collection_name(d))
        best = curve["alphas"].index(curve["best_alpha"][d])
        ax.plot([curve["alphas"][best]], [values[best]], "*", ms=14, color=line[0].get_color())
    ax.set_xlabel("alpha (0: zero-shot model, 1: fine-tuned)")
    ax.set_ylabel("zero-shot top-1")
    ax.set_title("WiSE-FT: weight-space interpolation")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
