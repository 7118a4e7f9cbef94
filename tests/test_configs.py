"""Every run file in configs/ loads, names a known objective on a model of the right kind, and
builds its training transform and optimizer settings (paths are not opened)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlcontrast import config as config_lib
from vlcontrast.objectives import objective_class
from vlcontrast.train.data_setup import train_transform

ROOT = Path(__file__).resolve().parents[1]
RUN_FILES = sorted((ROOT / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", RUN_FILES, ids=[str(p.relative_to(ROOT)) for p in RUN_FILES])
def test_every_run_file_loads_and_is_consistent(path):
    cfg = config_lib.resolve(config_lib.load(path))
    cls = objective_class(cfg.objective.name)
    assert ("text" in cls.modalities) == (cfg.model.kind == "dual"), path.name
    transform = train_transform(cfg)
    assert bool(cls.views) == hasattr(transform, "views")
    comments = [line for line in path.read_text().splitlines() if line.startswith("#")]
    assert any(" -m vlcontrast.cli train " in c or "vlcontrast train " in c for c in comments)


def test_the_ssl_run_files_cover_every_image_objective():
    names = {config_lib.load(p).objective.name for p in RUN_FILES if "ssl" in p.parts}
    assert names >= {"simclr", "moco", "mocov3", "byol", "simsiam", "barlow_twins"}
