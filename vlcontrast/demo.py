"""``vlcontrast demo``: generate the embedded corpus, train a tiny CLIP, evaluate it zero-shot,
and index the held-out images for text-to-image search (``vlcontrast serve`` shows them).

Everything is local: coloured-shape images with captions (``data.synthetic``), a word-level
tokenizer trained on them, timm's ``test_resnet`` image tower and a 2-layer BERT text tower
built from config. On 2 CPU cores it trains in a few minutes and reaches far above chance on
held-out images. The run is ``vlcontrast/demo.yaml`` (linked as ``configs/demo.yaml``), defined
once.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from accelerate import PartialState

from vlcontrast import config as config_lib
from vlcontrast.config import Config, EvaluatorConfig
from vlcontrast.data.synthetic import make_corpus
from vlcontrast.embed import Embedder
from vlcontrast.eval.zeroshot import evaluate_zeroshot
from vlcontrast.models.load import load_model
from vlcontrast.search.build import BuildOptions, build_index
from vlcontrast.search.engine import SearchIndex
from vlcontrast.search.sheet import hits_sheet
from vlcontrast.search.units import SourceSpec
from vlcontrast.train.loop import train
from vlcontrast.train.metrics_log import read_jsonl

DEMO_FILE = "demo.yaml"  # the run file, shipped in the package (configs/demo.yaml links to it)
QUERY = "a large blue circle at the top left"


def demo_values() -> dict[str, Any]:
    """The demo's run file as a mapping (only what differs from the defaults)."""
    return yaml.safe_load(resources.files("vlcontrast").joinpath(DEMO_FILE).read_text())


def demo_config(out_dir: Path, corpus: dict[str, str], overrides: list[str]) -> Config:
    """The run file with its paths moved under ``out_dir``, then ``overrides``."""
    values = demo_values()
    if any(o.startswith("model.preset=") for o in overrides):  # the preset's towers, not ours
        values.pop("image", None)
        values.pop("model", None)
        values["text"] = {k: v for k, v in values["text"].items() if k == "tokenizer"}
    values.setdefault("data", {})["train_shards"] = corpus["train_shards"]
    values.setdefault("text", {})["tokenizer"] = corpus["tokenizer"]
    values.setdefault("train", {})["output_dir"] = str(out_dir / "run")
    # evaluated once after training, exactly as `vlcontrast eval` does
    values.setdefault("eval", {})["evaluators"] = []
    return config_lib.build(values, overrides)  # presets apply as in `train`


def ensure_corpus(data_dir: Path) -> dict[str, str]:
    if not (data_dir / "DONE").exists():
        print(f"generating the synthetic corpus in {data_dir} ...")
        return make_corpus(data_dir)
    shards = sorted((data_dir / "train").glob("*.tar"))
    held = sorted((data_dir / "heldout").glob("*.tar"))
    return {
        "train_shards": str(data_dir / "train" / f"{{00000..{len(shards) - 1:05d}}}.tar"),
        "heldout_shards": str(data_dir / "heldout" / f"{{00000..{len(held) - 1:05d}}}.tar"),
        "tokenizer": str(data_dir / "tokenizer"),
    }


def class_search(index: SearchIndex, classnames: list[str]) -> dict[str, Any]:
    """Search the index for each class's caption ("a red circle"): the fraction of classes whose
    first result is an image of that class, and the classes that missed."""
    missed = []
    for label, name in enumerate(classnames):
        (first,) = index.search_text(f"a {name}", k=1)
        if first.get("label") != label:
            missed.append(name)
    return {"top1": 1 - len(missed) / len(classnames), "missed": missed}


def run_demo(out_dir: str | Path = "vlcontrast_demo", overrides: list[str] | None = None) -> dict:
    out_dir = Path(out_dir)
    corpus = ensure_corpus(out_dir / "data")
    cfg = demo_config(out_dir, corpus, overrides or [])
    if Path(cfg.train.output_dir).is_dir():  # the demo's own previous run: made again below
        shutil.rmtree(cfg.train.output_dir)
    run = train(cfg)  # evaluated once, below, exactly as `vlcontrast eval zeroshot` does

    model, tokenizer, saved_cfg = load_model(Path(run["checkpoint"]))
    heldout = corpus["heldout_shards"]
    device = PartialState().device  # the device `vlcontrast eval` picks, so numbers match
    embedder = Embedder.from_model(model.to(device), tokenizer, saved_cfg, device)
    result = evaluate_zeroshot(embedder, EvaluatorConfig(kind="zeroshot", data=heldout))
    metrics = result["metrics"]
    index_dir = out_dir / "index"  # the held-out images, searchable: `vlcontrast serve DIR`
    options = BuildOptions(num_workers=1, overwrite=True, progress=False, device=device)
    build_index(index_dir, [SourceSpec(heldout)], run["checkpoint"], options)
    index = SearchIndex(index_dir, device=device)
    search = class_search(index, result["classnames"])
    hits = [
        {"score": h["score"], "key": h["key"], "row": h["row"]}
        for h in index.search_text(QUERY, k=5)
    ]
    hits_sheet(QUERY, hits, index, out_dir / "query.png")
    summary = {
        "zeroshot_top1": metrics["top1"],
        "zeroshot_top5": metrics["top5"],
        "chance": metrics["chance"],
        "heldout_images": int(metrics["n"]),
        "steps": run["steps"],
        "final_loss": run["final_loss"],
        "samples_per_s": samples_per_s(Path(cfg.train.output_dir)),
        "checkpoint": run["checkpoint"],
        "query": QUERY,
        "query_top5": hits,
        "index": str(index_dir),
        "search_class_top1": search["top1"],
        "search_missed_classes": search["missed"],
        "eval_command": f"vlcontrast eval zeroshot --checkpoint {run['checkpoint']} "
        f"--data '{heldout}'",
    }
    (out_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_report(summary, len(result["classnames"]))
    return summary


def samples_per_s(run_dir: Path) -> float:
    """Mean training throughput over the logged windows, excluding the first (warm-up)."""
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "train/samples_per_s" in r]
    rows = rows[1:] or rows
    return sum(r["train/samples_per_s"] for r in rows) / max(1, len(rows))


def print_report(summary: dict, n_classes: int) -> None:
    top1, chance = summary["zeroshot_top1"], summary["chance"]
    print()
    print(f"zero-shot on {summary['heldout_images']} held-out images, {n_classes} classes:")
    print(f"  top-1 {top1:.4f}   top-5 {summary['zeroshot_top5']:.4f}   chance {chance:.4f}")
    print(f"  ({top1 / chance:.1f}x chance after {summary['steps']} steps,")
    print(f"   {summary['samples_per_s']:.0f} samples/s)")
    print(f"  reproduce: {summary['eval_command']}")
    print(f"text -> image query: {summary['query']!r} (pictures in query.png)")
    for hit in summary["query_top5"]:
        print(f"  {hit['score']:.3f}  {hit['caption']}")
    print(f"search index of the held-out images: {summary['index']}")
    print(
        f"  searching 'a {{class}}' puts an image of that class first for "
        f"{summary['search_class_top1']:.0%} of the {n_classes} classes"
    )
    print(f"  browse it: vlcontrast serve {summary['index']}   (then open http://127.0.0.1:8000/)")
