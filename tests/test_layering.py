"""The import graph matches the data flow: no cycles, and evaluation and inference loading never
reach into the trainer."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "vlcontrast"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the vlcontrast modules it imports anywhere in its file (function-local and
    TYPE_CHECKING imports included: a cycle hidden in a function is still a cycle)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            edges.update(t for t in targets if t.startswith("vlcontrast") and t in modules)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_eval_search_and_inference_loading_import_nothing_from_train():
    graph = import_graph()
    starts = [m for m in graph if m.startswith(("vlcontrast.eval", "vlcontrast.search"))]
    assert "vlcontrast.search.server" in starts
    starts += ["vlcontrast.models.load", "vlcontrast.embed", "vlcontrast.data.collection"]
    for start in starts:
        bad = sorted(m for m in reachable(graph, start) if m.startswith("vlcontrast.train"))
        assert not bad, f"{start} reaches {bad}"


def test_reading_a_config_or_a_model_reaches_no_objective_or_loss():
    graph = import_graph()
    for start in ("vlcontrast.models.load", "vlcontrast.config"):
        bad = sorted(
            m
            for m in reachable(graph, start)
            if m.startswith(("vlcontrast.objectives", "vlcontrast.losses"))
        )
        assert not bad, f"{start} reaches {bad}"


def test_the_shared_models_hold_no_method_settings_and_no_method_heads():
    """Methods own their heads (objectives/): nothing of them in ModelConfig or the models."""
    from vlcontrast import config as config_lib
    from vlcontrast.config import ModelConfig
    from vlcontrast.models import build_model

    fields = set(ModelConfig.__dataclass_fields__)
    assert not fields & {"proj_bn", "predictor_hidden", "ssl_head_hidden", "ssl_head_dim"}
    for kind, name, parts in (
        ("image", "byol", {"image", "image.trunk"}),
        (
            "dual",
            "slip",
            {"image", "image.trunk", "image.proj", "text", "text.encoder", "text.proj"},
        ),
    ):
        cfg = config_lib.load(
            None, [f"model.kind={kind}", f"objective.name={name}", "model.preset=tiny"]
        )
        model = build_model(cfg)
        children = {n for n, _ in model.named_modules() if n and n.count(".") <= 1}
        assert children == parts, (kind, children)


def test_search_does_not_depend_on_evaluation():
    graph = import_graph()
    for start in (m for m in graph if m.startswith("vlcontrast.search")):
        bad = sorted(
            m
            for m in reachable(graph, start)
            if m == "vlcontrast.eval" or m.startswith("vlcontrast.eval.")
        )  # the evaluation package; vlcontrast.eval_config is the run config's schema
        assert not bad, f"{start} reaches {bad}"


def test_the_checker_sees_a_planted_cycle():
    """The walk itself: a cycle and a forbidden edge are found when they exist."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert "vlcontrast.train.loop" in reachable(import_graph(), "vlcontrast.cli")


# the one module that may read a pickle: the earlier sharded format, on the user's explicit word
TRUSTED_OPT_IN = PACKAGE / "train" / "legacy_shards.py"
UNSAFE_NAMES = {
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "Unpickler",
    "FileSystemReader",
    "load_bytes",
}
DCP = "torch.distributed.checkpoint"


def unsafe_lines(path: Path, root: Path = PACKAGE.parent) -> list[str]:
    """Code in ``path`` that could unpickle: pickle itself, torch.load without
    weights_only=True, or torch.distributed.checkpoint beyond its state-dict functions (its
    reader unpickles the metadata, and its load planner reads items declared as bytes with
    torch.load(weights_only=False))."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        bad = False
        if isinstance(node, ast.Import):
            bad = any(
                a.name.split(".")[0] in UNSAFE_NAMES
                or a.name.startswith(DCP)
                and not a.name.startswith(f"{DCP}.state_dict")
                for a in node.names
            )
        elif isinstance(node, ast.ImportFrom) and node.module:
            bad = (
                node.module.split(".")[0] in UNSAFE_NAMES
                or (node.module.startswith(DCP) and node.module != f"{DCP}.state_dict")
                or any(a.name in UNSAFE_NAMES for a in node.names)
            )
        elif isinstance(node, (ast.Name, ast.Attribute)):
            bad = (node.id if isinstance(node, ast.Name) else node.attr) in UNSAFE_NAMES
        elif isinstance(node, ast.keyword) and node.arg == "weights_only":
            bad = not (isinstance(node.value, ast.Constant) and node.value.value is True)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            call = ast.unparse(node.func)
            bad = call == "torch.load" and not any(k.arg == "weights_only" for k in node.keywords)
        if bad:
            found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_nothing_outside_the_one_opt_in_can_unpickle():
    bad = [
        line
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != TRUSTED_OPT_IN
        for line in unsafe_lines(path)
    ]
    assert not bad, "\n".join(bad)
    assert unsafe_lines(TRUSTED_OPT_IN)  # the check sees what it looks for


def test_the_unpickling_check_sees_each_kind(tmp_path):
    cases = [
        "import pickle",
        "from pickle import Unpickler",
        "import torch.distributed.checkpoint as dcp",
        "from torch.distributed.checkpoint import FileSystemReader",
        "torch.load(f)",
        "torch.load(f, weights_only=False)",
        "x.load_bytes(b)",
    ]
    for code in cases:
        (tmp_path / "m.py").write_text(code + "\n")
        assert unsafe_lines(tmp_path / "m.py", tmp_path), code
    (tmp_path / "m.py").write_text(
        "from torch.distributed.checkpoint.state_dict import get_model_state_dict\n"
        "torch.load(f, map_location='cpu', weights_only=True)\n"
        "text = 'a pickle is refused'\n"
    )
    assert not unsafe_lines(tmp_path / "m.py", tmp_path)


def test_help_and_argument_errors_import_no_heavy_library():
    """``vlcontrast --help``, every command's ``--help``, ``config``, ``config --keys`` and
    argument and config errors answer without
    torch, transformers or timm (benchmarks/cli_startup.py measures the time and memory)."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from vlcontrast.cli import main\n"
        "for argv in sys.argv[1:]:\n"
        "    try:\n"
        "        main(argv.split())\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))\n"
    )
    commands = ["--help", "train", "train --help", "eval zeroshot --help", "index build --help"]
    commands += ["serve --help", "checkpoint --help", "import --help", "data --help"]
    commands += ["config", "config --keys", "config configs/clip_b32.yaml data.crop=bad"]
    out = subprocess.run(
        [sys.executable, "-c", probe, *commands], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "[]", out[-500:]
