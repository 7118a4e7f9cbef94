"""The benchmark scripts run (figures are printed, never asserted: see benchmarks/)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_python

pytestmark = pytest.mark.slow  # benchmark smoke tests: 'pytest -m "not slow"' skips them

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str, timeout: int = 300) -> str:
    """``benchmarks/SCRIPT ARGS`` from the repository root: its stdout, once it exited 0."""
    command = [sys.executable, f"benchmarks/{script}", *args]
    done = run_python(command, cwd=ROOT, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def run_loader_benchmark(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "benchmarks/loader.py", *args, "--repeats", "1"]
    return run_python(command, cwd=ROOT)


def test_loader_benchmark_runs_and_its_crops_pass_the_psnr_check():
    # 1600-px JPEGs, so the reduced (1/4-scale) decode is the path checked against the baseline;
    # the script exits 1 when a crop is under 35 dB.
    done = run_loader_benchmark("--small", "0", "--large", "64", "--workers", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith(" 1600x1067")]
    timing, psnr = rows
    assert timing[1] == "0" and float(timing[2]) > 0 and float(timing[3]) > 0
    assert psnr[1:3] == ["crop", "PSNR"] and float(psnr[-4].rstrip(",")) >= 35


def test_loader_benchmark_times_multicrop_against_one_pipeline_per_crop():
    done = run_loader_benchmark(
        "--small", "64", "--large", "0", "--workers", "0", "--multicrop", "swav"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "multi-crop swav: 2x224 + 6x96 crops per image" in done.stdout
    timing = next(
        line.split() for line in done.stdout.splitlines() if line.startswith("   384x256")
    )
    assert float(timing[2]) > 0 and float(timing[3]) > 0 and timing[4].endswith("x")


def test_dense_benchmark_over_seeds_prints_the_paired_comparison(tmp_path):
    """Random init, MoCo v2 and DenseCL for two seeds at once, each in its own process: the
    per-seed rows are the children's JSON and the summary is the paired statistics of them."""
    command = [sys.executable, "benchmarks/dense_shapes.py", "--smoke", "--seeds", "3-4"]
    command += ["--jobs", "2", "--out", str(tmp_path / "runs"), "--keep", str(tmp_path / "k")]
    done = run_python(command, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    runs = {s: json.loads((tmp_path / "runs" / f"{s}.json").read_text()) for s in (3, 4)}
    assert [runs[s]["seed"] for s in (3, 4)] == [3, 4]
    assert (tmp_path / "k" / "s4" / "densecl").is_dir()
    lines = done.stdout.splitlines()
    row = next(line for line in lines if line.startswith("   4 |")).split("|")
    want = runs[4]["rows"]
    assert float(row[2]) == pytest.approx(want["moco"]["knn"], abs=5e-4)
    assert float(row[4]) == pytest.approx(want["densecl"]["knn"] - want["moco"]["knn"], abs=1e-3)
    summary = next(line for line in lines if line.startswith("dense kNN, DenseCL - MoCo v2"))
    assert "over 2 seeds" in summary and any(line.startswith("linear probe,") for line in lines)
    # each seed's own run prints its table: kNN and the probe for each backbone, per-class IoU
    log = (tmp_path / "runs" / "3.log").read_text().splitlines()
    head = next(i for i, line in enumerate(log) if "mean IoU" in line)
    table = [line.split("|") for line in log[head + 1 : head + 4]]
    assert [r[0].strip() for r in table] == ["random init", "moco", "densecl"]
    assert all(0 <= float(r[1]) <= 1 and 0 <= float(r[4]) <= 1 for r in table)  # kNN, linear
    per_class = [line.split("|") for line in log[log.index("per-class IoU of dense kNN") + 1 :]]
    assert [c.strip() for c in per_class[0][1:3]] == ["background", "circle"]
    assert [r[0].strip() for r in per_class[1:]] == ["random init", "moco", "densecl"]


def test_dense_memory_benchmark_runs_both_variants_and_they_agree():
    command = [sys.executable, "benchmarks/dense_memory.py", "--images", "40", "--side", "64"]
    done = run_python(command, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "features and patch labels agree" in done.stdout
    rows = [line.split("|") for line in done.stdout.splitlines() if "|" in line][1:]
    assert [r[0].strip() for r in rows] == ["whole", "streamed"]


def test_paired_statistics_against_statistics_and_a_binomial_written_here():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import math
    import statistics

    import paired

    a = [0.435, 0.440, 0.441, 0.464, 0.430, 0.432]
    b = [0.456, 0.454, 0.443, 0.422, 0.467, 0.432]
    got = paired.paired_stats(a, b)
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    assert got["mean"] == pytest.approx(statistics.mean(diffs))
    assert got["sd"] == pytest.approx(statistics.stdev(diffs))
    assert got["se"] == pytest.approx(statistics.stdev(diffs) / math.sqrt(6))
    assert (got["wins"], got["losses"]) == (4, 1)  # the tie is left out of the sign test
    # P(X >= 4), X ~ Binomial(5, 1/2) = (5 + 1) / 32
    assert got["p"] == pytest.approx(6 / 32)
    assert paired.sign_test(12, 4) == pytest.approx(
        sum(math.comb(16, k) for k in range(12, 17)) / 2**16
    )
    assert paired.parse_seeds("0-3,8") == [0, 1, 2, 3, 8]


def test_a_seed_study_continues_where_it_stopped(tmp_path):
    """``paired.run_seeds`` reads back a seed that finished with the same arguments and code,
    and runs it again when either differs or when its run did not finish."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paired

    script = tmp_path / "fake.py"
    script.write_text(
        "import json, sys\n"
        "seed = int(sys.argv[sys.argv.index('--seed') + 1])\n"
        "out = sys.argv[sys.argv.index('--json') + 1]\n"
        f"open({str(tmp_path / 'calls')!r}, 'a').write(f'{{seed}} ')\n"
        "json.dump({'seed': seed, 'value': seed * 2}, open(out, 'w'))\n"
    )
    calls = tmp_path / "calls"
    out = tmp_path / "runs"
    first = paired.run_seeds(str(script), ["--x", "1"], [0, 1], 2, out)
    assert first == {0: {"seed": 0, "value": 0}, 1: {"seed": 1, "value": 2}}
    assert sorted(calls.read_text().split()) == ["0", "1"]
    (out / "1.run.json").unlink()  # seed 1 was stopped before its stamp was written
    assert paired.run_seeds(str(script), ["--x", "1"], [0, 1, 2], 1, out) == {
        s: {"seed": s, "value": 2 * s} for s in (0, 1, 2)
    }
    assert sorted(calls.read_text().split()[2:]) == ["1", "2"]  # 0 read back, 1 and 2 run
    paired.run_seeds(str(script), ["--x", "2"], [0], 1, out)  # other arguments: run again
    script.write_text(script.read_text() + "# changed\n")
    paired.run_seeds(str(script), ["--x", "2"], [0], 1, out)  # other code: run again
    assert calls.read_text().split()[4:] == ["0", "0"]


def test_loader_benchmark_refuses_too_few_batches_to_time():
    done = run_loader_benchmark("--small", "64", "--large", "0", "--workers", "2")
    assert done.returncode == 1 and "raise --small/--large" in done.stderr


def test_learning_benchmark_runs_both_trainers():
    """One epoch of 300 digits each: the script writes the data both ways, trains vlcontrast and
    OpenCLIP (open_clip_train.main), and scores both."""
    pytest.importorskip("open_clip_train")
    command = [sys.executable, "benchmarks/learning.py", "--corpus", "digits", "--epochs", "1"]
    command += ["--limit", "300"]
    done = run_python(command, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.strip().startswith("digits |"))
    cells = [c.strip() for c in row.split("|")]
    assert all(0.0 <= float(cells[i]) <= 1.0 for i in (3, 4))  # both zero-shot top-1 figures
    assert cells[-1].endswith("x")  # the time ratio


def test_search_benchmark_runs_every_backend():
    pytest.importorskip("faiss")
    command = [
        sys.executable,
        "benchmarks/search.py",
        "--n",
        "3000",
        "--dim",
        "32",
        "--queries",
        "10",
    ]
    out = run_python(command, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for kind in ("exact", "exact-stream", "flat", "hnsw", "ivfpq"):
        assert f"{kind:>12} | " in out.stdout and "failed" not in out.stdout
    assert "records of k = 3000 results looked up" in out.stdout


def test_faiss_load_benchmark_loads_every_kind_to_the_same_neighbours():
    pytest.importorskip("faiss")
    out = run_benchmark("faiss_load.py", "--n", "3000", "--dim", "32")
    rows = [line.split() for line in out.splitlines() if "|" in line][1:]
    assert [row[0] for row in rows] == ["flat", "hnsw", "ivfpq"]
    assert all(row[3].endswith("x") and row[-1] == "True" for row in rows)


def test_probe_memory_benchmark_runs_both_ways_and_they_agree():
    out = run_benchmark("probe_memory.py", "--rows", "3000", "--dim", "16", "--classes", "10")
    assert "memory, full / chunked:" in out and "time, chunked / full:" in out
    gap = float(out.split("largest gradient difference ")[1].split()[0])
    assert gap < 1e-6


def test_checkpoint_benchmark_runs_both_ways():
    """Both ways save and restore exactly (the script asserts the restored weights) and print
    their rows and ratios."""
    command = [sys.executable, "benchmarks/checkpoint_save.py", "--preset", "tiny"]
    done = run_python(command, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = [line.split("|")[1:3] for line in done.stdout.splitlines() if line.startswith("| ")]
    pairs = {(phase.strip(), way.strip()) for phase, way in rows}
    assert pairs >= {(p, w) for p in ("save", "restore") for w in ("full", "sharded")}
    assert "save: sharded / full: time" in done.stdout


def test_moco_step_benchmark_runs_both_variants():
    command = [
        sys.executable,
        "benchmarks/moco_step.py",
        *("--model", "test_resnet", "--size", "32", "--batch", "8", "--steps", "1"),
        "--repeats",
        "1",
    ]
    done = run_python(command, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "before:" in done.stdout and "now:" in done.stdout and "now / before =" in done.stdout


def test_local_crops_benchmark_times_both_sizes():
    out = run_benchmark("local_crops.py", "--method", "swav", "--steps", "3", "--batch", "8")
    assert "at 96 px (fixed, before)" in out and "at 12 px (the default)" in out
    assert "speed-up:" in out


def test_dino_head_benchmark_times_both_heads():
    command = [sys.executable, "benchmarks/dino_head.py", "--steps", "3", "--repeats", "1"]
    done = run_python([*command, "--batch", "8"], cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "65536 outputs (before)" in done.stdout
    assert "4096 outputs (the default)" in done.stdout and "speed-up:" in done.stdout


def test_eval_ranks_benchmark_splits_the_search_and_the_sweep_and_agrees():
    command = [sys.executable, "benchmarks/eval_ranks.py", "--bank", "2000", "--test", "100"]
    done = run_python([*command, "--probe", "300"], cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kNN speed-up:" in done.stdout and "probe sweep, now / before:" in done.stdout
    assert "bank memory a rank, whole / split: 2.00x" in done.stdout
    assert "probe memory a rank, before / now: 2.00x" in done.stdout
    assert "probe curves equal one process's: True" in done.stdout
    assert "split bank / whole bank time:" in done.stdout
    assert "results equal on every rank: True" in done.stdout


def test_text_pairs_benchmark_trains_scores_sts_and_searches():
    command = [sys.executable, "benchmarks/simcse_digits.py", "--smoke"]
    done = run_python(command, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in ("random init |", "simcse |", "pairs |", "top 5 of 355 items"):
        assert row in done.stdout, done.stdout[-2000:]


def test_train_step_benchmark_runs():
    command = [sys.executable, "benchmarks/train_step.py", "--configs", "tiny"]
    command += ["--precisions", "no", "--seconds", "0.5"]
    done = run_python(command, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    row = next(line.split() for line in done.stdout.splitlines() if line.startswith("tiny "))
    assert float(row[2]) > 0 and float(row[4]) > 0  # samples/s and GFLOP per step


def test_gpu_benchmark_smoke_runs_every_part(tmp_path):
    """benchmarks/gpu.py --smoke: every part at toy sizes on the CPU, the same code as on a GPU.
    Both trainers' steps count about the same FLOPs (one architecture), both losses agree, the
    sharded checkpoint restores every tensor, and the table holds every part's rows."""
    pytest.importorskip("open_clip")
    pytest.importorskip("faiss")
    out = tmp_path / "gpu.json"
    command = [sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(out)]
    done = run_python(command, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert not results["errors"]
    parts = results["parts"]
    assert set(parts) == {"step", "loss", "loader", "index", "fsdp"}
    step = parts["step"]
    for name in ("vlcontrast", "openclip", "vlcontrast compiled", "openclip compiled"):
        assert step[name]["samples_per_s"] > 0 and step[name]["mfu_measured"] > 0, name
    ours, theirs = step["vlcontrast"]["flops_per_step"], step["openclip"]["flops_per_step"]
    assert 0.9 < ours / theirs < 1.1  # the same architecture on both sides
    loss = parts["loss"]
    assert loss["vlcontrast tiled"]["loss"] == pytest.approx(loss["openclip ClipLoss"]["loss"])
    assert parts["loader"]["vlcontrast"]["samples_per_s"] > 0
    assert parts["index"]["build"]["rows"] == results["sizes"]["images"]
    assert parts["index"]["query"]["vectors"] == results["sizes"]["vectors"]
    assert parts["fsdp"]["checkpoint sharded"]["equal"] and parts["fsdp"]["fsdp"]["samples_per_s"]
    for prefix in ("| step | train step", "| step | MFU", "| loss |", "| loader |", "| index |"):
        assert prefix in done.stdout, prefix
    assert "| fsdp | checkpoint restore s" in done.stdout


def test_wiseft_benchmark_pretrains_finetunes_and_draws_the_curve(tmp_path):
    pytest.importorskip("sklearn")
    command = [sys.executable, "benchmarks/wiseft_digits.py", "--smoke", "--out", str(tmp_path)]
    done = run_python(command, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "| alpha | heldout_plain | heldout_inverted | heldout_rotated |" in done.stdout
    curve = json.loads((tmp_path / "curve" / "wiseft.json").read_text())
    assert curve["alphas"] == [0.0, 1.0] and (tmp_path / "curve" / "wiseft.png").is_file()


@pytest.mark.parametrize(
    "script, module, package",
    [
        ("against_lightly.py", "lightly", "lightly"),
        ("against_pml.py", "pytorch_metric_learning", "pytorch-metric-learning"),
    ],
)
def test_reference_library_comparisons_run_or_say_how_to_install_it(script, module, package):
    """With the library installed, every pair agrees (exit 0); without it, exit 2 and the
    install line."""
    import importlib.util

    command = [sys.executable, f"benchmarks/{script}"]
    done = run_python(command, cwd=ROOT)
    if importlib.util.find_spec(module) is None:
        assert done.returncode == 2 and f"pip install --no-deps {package}" in done.stderr
    else:
        assert done.returncode == 0, done.stdout + done.stderr
        assert "largest difference" in done.stdout


def test_dense_k_scores_each_k_as_the_eval_command_does(tmp_path, capsys):
    """Each cell of ``benchmarks/dense_k.py`` is ``vlcontrast eval dense-knn --k K``'s mean IoU."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import dense_k

    from tests.test_dense_knn import tiny_densecl_run
    from vlcontrast import cli

    masks, run = tmp_path / "masks", tmp_path / "run"
    assert cli.main(["data", "masks", str(masks), "--train", "24", "--heldout", "8"]) == 0
    assert cli.main(tiny_densecl_run(masks, run)) == 0
    sets = ["--train-data", f"{masks}/train/00000.tar", "--data", f"{masks}/heldout/00000.tar"]
    expected = {}
    for k in (3, 7):
        report = tmp_path / f"k{k}.json"
        args = ["eval", "dense-knn", "--checkpoint", str(run), "--k", str(k), *sets]
        assert cli.main([*args, "--json", str(report)]) == 0
        expected[k] = json.loads(report.read_text())["dense_knn"]["metrics"]["miou"]
    capsys.readouterr()
    assert dense_k.main([str(run), "--random-init", "--k", "3", "7", *sets]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| random init |") and rows[2].startswith(f"| {run} |")
    assert [float(cell) for cell in rows[2].strip("| ").split(" | ")[1:]] == [
        round(expected[3], 3),
        round(expected[7], 3),
    ]
