"""The README and docs/ as a newcomer reads them: the "your own images" block runs as written
(at tiny size: fewer images and epochs, the only substitutions), and every ``vlcontrast`` line
in a bash block of the README or docs/ parses with the real command line, its dotted keys
existing in the schema (``vlcontrast config --keys``)."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from vlcontrast import cli
from vlcontrast import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TINY = {
    "data example my_images": "data example my_images -n 60",
    "train.epochs=30": "train.epochs=2",
}


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def command_lines(block: str) -> list[str]:
    """Each command of a block: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in block.splitlines():
        line = pending + line
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        words = shlex.split(line, comments=True)
        if words:
            out.append(" ".join(shlex.quote(w) for w in words))
    return out


def newcomer_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Your own images") :]
    return command_lines(bash_blocks(section)[0])


def test_the_newcomer_block_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    lines = newcomer_block()
    assert [line.split()[1] for line in lines] == [
        "data", "data", "shards", "tokenizer", "train", "eval", "index", "search", "serve"
    ]  # fmt: skip
    for line in lines[:-1]:
        for long, short in TINY.items():
            line = line.replace(long, short)
        argv = shlex.split(line)[1:]
        if argv[0] == "train":
            argv.append("data.num_workers=0")  # one process: the suite runs on 2 cores
        assert cli.main(argv) == 0, f"{line}\n{capsys.readouterr()}"
        out = capsys.readouterr().out
        if argv[0] == "eval":
            assert "top1" in out
        if argv[0] == "search":
            assert out.startswith("top 10 of 60 items for 'a red circle':")
    assert (tmp_path / "hits.png").stat().st_size > 1000
    assert (tmp_path / "my_shards.png").stat().st_size > 1000
    serve = shlex.split(lines[-1])
    process = subprocess.Popen(
        [sys.executable, "-m", "vlcontrast.cli", *serve[1:], "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = process.stdout.readline()
            match = re.search(r"(http://[\d.]+:\d+/)", line)
            url = match.group(1) if match else None
        assert url, "serve printed no address"
        with urllib.request.urlopen(url + "api/info") as response:
            assert json.loads(response.read())["items"] == 60
    finally:
        process.terminate()
        process.wait(timeout=30)


def all_command_lines() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in bash_blocks(page.read_text()):
            for line in command_lines(block):
                words = shlex.split(line)
                if words and words[0] == "vlcontrast":
                    found.append((page.name, line))
    return found


@pytest.mark.parametrize("page,line", all_command_lines())
def test_every_documented_command_parses_with_real_keys(page, line):
    words = [w for w in shlex.split(line)[1:] if w != "..."]
    try:
        cli.build_parser().parse_args(words)
    except SystemExit as err:
        pytest.fail(f"{page}: {line!r} does not parse ({err})")
    keys = {entry.split(" ")[0] for entry in config_lib.keys()}
    for word in words:
        match = re.match(r"^([a-z_]+\.[a-z_.0-9]+)=", word)
        if match and match.group(1) not in keys:
            parents = [k for k in keys if match.group(1).startswith(k + ".")]
            assert parents, f"{page}: {line!r}: {match.group(1)} is not a config key"


def test_the_documented_keys_exist():
    """Every `section.key` named in a table row of the README or docs/ is in the schema."""
    keys = {entry.split(" ")[0] for entry in config_lib.keys()}
    for page in PAGES:
        for key in re.findall(r"^\| `([a-z_]+\.[a-z_.]+)`", page.read_text(), flags=re.M):
            assert key in keys or any(key.startswith(k + ".") for k in keys), f"{page.name}: {key}"
