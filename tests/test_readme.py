"""Every code block of the README runs as written (issue "Robustness and first use", finding 8).

Each fenced block must name its language; what happens to it:

* ``python``: run in a fresh interpreter;
* ``bash``: run with ``bash -euo pipefail``, with this checkout's ``sphc`` and ``python`` first on
  ``PATH`` (what ``source .venv/bin/activate`` gives a user); ``sphc train`` commands run at small
  sizes (``--subset 8 --test-subset 4 --epochs 1 --batch 8``, and ``--device cpu`` without a GPU);
* ``sph``: a model, checked with ``sphc.check_source``;
* ``text``: output or a diagnostic, not run.

A comment line right before a block changes that (the README's readers do not see it):

* ``<!-- readme-test: skip: REASON -->``: not run, for the reason given;
* ``<!-- readme-test: sphc only: REASON -->``: of a ``bash`` block, only the ``sphc`` commands run
  (the install commands around them run in CI's ``.ci/run``);
* ``<!-- readme-test: output of COMMAND -->``: a ``text`` block that must equal COMMAND's output.

Every block runs in its own empty directory holding a link to ``examples/``, so what the README's
commands write goes there, not into the checkout.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import sphc

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"
_BLOCK = re.compile(
    r"^(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>[^\n]*)\n(?P<body>.*?)^```$", re.S | re.M
)
LANGUAGES = ("python", "bash", "sph", "text")
SMALL = {"--subset": "8", "--test-subset": "4", "--epochs": "1", "--batch": "8"}  # one training step


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    body: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"L{self.line}-{self.lang}"


def blocks(text: str) -> list[Block]:
    return [
        Block(text.count("\n", 0, m.start("body")), m["lang"].strip(), m["body"], m["marker"])
        for m in _BLOCK.finditer(text)
    ]


BLOCKS = blocks(README.read_text(encoding="utf-8"))


def small(command: list[str]) -> list[str]:
    """An ``sphc train`` command at the test's sizes; any other command unchanged."""
    if command[:2] != ["sphc", "train"]:
        return command
    out, i = [], 0
    while i < len(command):
        if command[i] in SMALL or command[i] == "--device":
            i += 2
            continue
        out.append(command[i])
        i += 1
    device = command[command.index("--device") + 1] if "--device" in command else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        device = "cpu"
    return [*out, *(x for kv in SMALL.items() for x in kv), "--device", device, "--quiet"]


def shell_commands(block: Block) -> list[list[str]]:
    """The commands of a bash block (one per line, or the ``sphc`` parts of an ``&&`` chain)."""
    commands = []
    for line in block.body.splitlines():
        words = shlex.split(line, comments=True)
        if not words:
            continue
        parts = [[]]
        for w in words:
            if w == "&&":
                parts.append([])
            else:
                parts[-1].append(w)
        for part in parts:
            if part and part[0] == ".venv/bin/sphc":
                part = ["sphc", *part[1:]]
            if block.marker and block.marker.startswith("sphc only") and part[:1] != ["sphc"]:
                continue
            commands.append(small(part))
    return commands


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    bin_dir = tmp_path / ".bin"
    bin_dir.mkdir()
    for name, line in (
        ("sphc", f'exec {sys.executable} -m sphc "$@"'),
        ("python", f'exec {sys.executable} "$@"'),
    ):
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    return tmp_path


def _env(workdir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PATH": f"{workdir / '.bin'}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("SPHC_DEBUG", None)
    return env


def _run(args: list[str] | str, workdir: Path, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        args, cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=600, **kw
    )
    assert proc.returncode == 0, (
        f"{args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def test_every_block_is_tagged_and_every_marker_is_known():
    assert len(BLOCKS) >= 10
    for b in BLOCKS:
        assert b.lang in LANGUAGES, (
            f"README line {b.line}: a code block without a known language ({b.lang!r})"
        )
        if b.marker is None:
            continue
        kind, _, rest = (
            b.marker.partition(":") if not b.marker.startswith("output of ") else ("output", "", "")
        )
        assert kind in ("skip", "sphc only", "output"), f"README line {b.line}: unknown marker {b.marker!r}"
        if kind in ("skip", "sphc only"):
            assert rest.strip(), f"README line {b.line}: a `{kind}` marker must say why"
        if kind == "output":
            assert b.lang == "text"
        if kind == "sphc only":
            assert b.lang == "bash"


def test_small_rewrites_only_the_sizes_of_train_commands():
    cmd = [
        "sphc",
        "train",
        "m.sph",
        "--subset",
        "10000",
        "--epochs",
        "5",
        "--out",
        "runs/x",
        "--device",
        "cuda",
    ]
    got = small(cmd)
    assert got[:5] == ["sphc", "train", "m.sph", "--out", "runs/x"]
    assert got[got.index("--epochs") + 1] == "1" and got[got.index("--subset") + 1] == "8"
    assert got[-3:] == ["--device", "cpu" if not torch.cuda.is_available() else "cuda", "--quiet"]
    assert small(["sphc", "plot", "a", "-o", "b"]) == ["sphc", "plot", "a", "-o", "b"]


RUN = [b for b in BLOCKS if not (b.marker or "").startswith("skip")]


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_readme_block_runs_as_written(block: Block, workdir: Path):
    if block.lang == "python":
        _run([sys.executable, "-c", block.body], workdir)
    elif block.lang == "bash":
        for command in shell_commands(block):
            _run(["bash", "-euo", "pipefail", "-c", shlex.join(command)], workdir)
    elif block.lang == "sph":
        analysis = sphc.check_source(block.body, f"README.md:{block.line}")
        assert analysis.params > 0
    elif block.marker and block.marker.startswith("output of "):
        command = block.marker.removeprefix("output of ").strip("`")
        out = _run(["bash", "-c", command], workdir).stdout
        assert out.rstrip("\n") == block.body.rstrip("\n"), (
            f"README line {block.line} is not `{command}`'s output"
        )
