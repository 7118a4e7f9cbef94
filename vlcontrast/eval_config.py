"""The evaluation part of the run config (``eval.*``): the evaluator schema whose field metadata
also generates ``vlcontrast eval KIND``'s flags. Re-exported by ``vlcontrast.config``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vlcontrast.schema import NON_NEGATIVE, POSITIVE, between, choices

_choices = choices

ALL_EVAL = ("zeroshot", "retrieval", "linear_probe", "knn", "class_retrieval")
LABELLED = ("zeroshot", "linear_probe", "knn", "class_retrieval")
FITTED = ("linear_probe", "knn")
DENSE = ("dense_knn", "dense_linear")


# ``k`` left at 0: image kNN votes over 200 neighbours (Wu et al. 2018, as DINO's eval_knn.py);
# dense kNN over 30 patches, Hummingbird's open evaluation (open-hummingbird-eval's
# num_neighbour=30). Image kNN's 200 drowns the shapes of the synthetic masks in background
# patches: mean IoU 0.328 at k 200, 0.399 at 30, 0.419 at 20 (DenseCL, seed 17 of
# benchmarks/dense_shapes.py; docs/evaluation.md has the sweep).
NEIGHBOURS = {"knn": 200, "dense_knn": 30}


def neighbours(spec) -> int:
    """The ``k`` an evaluator uses: its own, or its kind's default (:data:`NEIGHBOURS`)."""
    return spec.k or NEIGHBOURS[spec.kind]


def _doc(text: str, kinds: tuple[str, ...] = ()) -> dict[str, Any]:
    """Field metadata: help text and the evaluator kinds that use the field (CLI flags)."""
    return {"help": text, "kinds": kinds}


@dataclass
class EvaluatorConfig:
    """One entry of ``eval.evaluators``: what to evaluate, on which data (see vlcontrast.eval).

    Each field's metadata says which kinds use it and its help text; ``vlcontrast eval KIND``
    generates its flags from them, so the CLI's defaults are these defaults."""

    kind: str = field(
        default="zeroshot",
        metadata=_choices(
            "zeroshot",
            "retrieval",
            "linear_probe",
            "knn",
            "class_retrieval",
            "sts",
            "dense_knn",
            "dense_linear",
        ),
    )
    name: str = field(default="", metadata=_doc("prefix of the logged metrics; default: kind"))
    data: str = field(
        default="",
        metadata=_doc(
            "the evaluation set (sts: a table of sentence pairs and scores, .csv/.tsv/.jsonl; "
            "dense_knn, dense_linear: shards of images with mask.png)",
            (*ALL_EVAL, "sts", *DENSE),
        ),
    )
    train_data: str = field(
        default="",
        metadata=_doc("the labelled set the classifier is fitted on", (*FITTED, *DENSE)),
    )
    gallery: str = field(
        default="",
        metadata=_doc(
            "the labelled set searched (default: --data itself, each query left out of its own "
            "ranking, as Musgrave et al. 2020)",
            ("class_retrieval",),
        ),
    )
    format: str = field(
        default="auto",
        metadata={**_choices("auto", "wds", "imagefolder", "hf"), **_doc("data format", ALL_EVAL)},
    )
    split: str = field(default="test", metadata=_doc("HF datasets: split of --data", ALL_EVAL))
    train_split: str = field(
        default="train", metadata=_doc("HF datasets: split of --train-data", FITTED)
    )
    image_field: str = field(
        default="", metadata=_doc("shards: extensions (jpg;png); HF: column (image)", ALL_EVAL)
    )
    label_field: str = field(
        default="", metadata=_doc("shards: cls or json.KEY; HF: column (label)", LABELLED)
    )
    caption_field: str = field(
        default="",
        metadata=_doc(
            "shards: txt or json.KEY; HF: column (caption); a list = several", ("retrieval",)
        ),
    )
    classes: str = field(
        default="",
        metadata=_doc(
            "class names: JSON or one per line (default: the data's own)",
            (*LABELLED, *DENSE),
        ),
    )
    templates: list[str] = field(
        default_factory=list,
        metadata=_doc(
            "prompt templates: openai_imagenet, generic, a file, or templates with {} (default: "
            "the classes file's, else generic)",
            ("zeroshot",),
        ),
    )
    max_samples: int = field(
        default=0,
        metadata={
            **NON_NEGATIVE,
            **_doc("only the first N samples (0 = all)", (*ALL_EVAL, "sts", *DENSE)),
        },
    )
    text_fields: list[str] = field(
        default_factory=lambda: ["sentence1", "sentence2"],
        metadata=_doc("the two sentence columns of the pairs table (STS-B's)", ("sts",)),
    )
    score_field: str = field(default="score", metadata=_doc("the gold similarity column", ("sts",)))
    k: int = field(
        default=0,
        metadata={
            **NON_NEGATIVE,
            **_doc(
                "neighbours: 200 for knn (Wu et al. 2018), 30 for dense_knn (Hummingbird's "
                "evaluation); 0 in a run file: the kind's",
                ("knn", "dense_knn"),
            ),
            "kind_defaults": NEIGHBOURS,  # what `vlcontrast eval KIND --help` shows
        },
    )
    temperature: float = field(
        default=0.1, metadata=_doc("similarity temperature", ("knn", "dense_knn"))
    )
    recall_at: list[int] = field(
        default_factory=lambda: [1, 2, 4, 8],
        metadata=_doc("K of Recall@K (CUB-200 and Cars papers: 1, 2, 4, 8)", ("class_retrieval",)),
    )
    val_fraction: float = field(
        default=0.2,
        metadata={
            **between(0.0, 0.9),
            **_doc(
                "held out from the train data (dense_linear: its images) to pick the L2 penalty",
                ("linear_probe", "dense_linear"),
            ),
        },
    )
    weight_decays: list[float] = field(
        default_factory=lambda: [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        metadata=_doc("L2 penalties swept", ("linear_probe", "dense_linear")),
    )


@dataclass
class EvalConfig:
    # Evaluators run every `every` steps and at the end of training, e.g.
    #   evaluators: [{kind: zeroshot, data: "heldout/{00000..00001}.tar"}]
    evaluators: list[EvaluatorConfig] = field(default_factory=list)
    # steps between evaluations; 0 = only at the end
    every: int = field(default=0, metadata=NON_NEGATIVE)
    batch_size: int = field(default=256, metadata=POSITIVE)  # images per forward when embedding
    # dataloader workers per rank while embedding
    num_workers: int = field(default=0, metadata=NON_NEGATIVE)
