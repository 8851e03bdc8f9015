"""The documentation: the site builds strictly, and every example in it runs.

Each page's ``python`` and ``bash`` code blocks run in order in a fresh folder: the page's Python
blocks as one script (later blocks use what earlier ones defined), then each bash block with the
virtual environment's commands first on ``PATH`` and the checkout's scripts beside it. A block
titled with a file name (```` ```python title="my_models.py" ````) is written to that file
instead: the page says to save it there. A block after ``<!-- not run: REASON -->`` is shown
only: it takes minutes or hours, or needs what a test machine lacks, and the comment says which.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
BLOCK = re.compile(
    r"(?P<skip><!-- not run: [^>]+ -->\n)?^```(?P<lang>python|bash)(?P<attrs>[^\n]*)\n(?P<code>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, file name or None) of every block a test runs, in page order."""
    found = []
    for match in BLOCK.finditer(page.read_text()):
        if match["skip"]:
            continue
        title = re.search(r'title="([^"]+)"', match["attrs"])
        found.append((match["lang"], match["code"], title[1] if title else None))
    return found


RUNNABLE = [page for page in PAGES if blocks(page)]


def _digit_folder(root: Path) -> None:
    """Four training and one test PNG of each digit, in ImageFolder layout (own-network.md)."""
    from PIL import Image

    from n2n_gym.data import load_dataset

    data = load_dataset("mnist", train_limit=300)
    pixels = (data.train_x * 0.3081 + 0.1307).clamp(0, 1).mul(255).round().byte()
    written: dict[int, int] = {}
    for i, label in enumerate(data.train_y.tolist()):
        count = written.get(label, 0)
        if count < 5:
            folder = root / ("train" if count < 4 else "test") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i, 0].numpy()).save(folder / f"{i}.png")
            written[label] = count + 1


# What a page's examples read that the page does not make itself.
SETUP = {"own-network.md": lambda folder: _digit_folder(folder / "digits")}


def test_the_runnable_examples_are_the_ones_meant():
    names = {page.name for page in RUNNABLE}
    assert {"README.md", "environments.md", "own-network.md", "benchmark.md"} <= names
    assert "surrogate.md" in names
    # Every shown-only block says why.
    for page in PAGES:
        for match in re.finditer(r"<!-- not run: ([^>]*) -->", page.read_text()):
            assert len(match[1].strip()) > 5, page


@pytest.mark.expensive
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_example_of_the_page_runs(page, tmp_path):
    SETUP.get(page.name, lambda folder: None)(tmp_path)
    for script in ("train_agent.py", "evaluate.py"):
        (tmp_path / script).symlink_to(ROOT / script)
    python = []
    for lang, code, title in blocks(page):
        if title:
            (tmp_path / title).write_text(code)
        elif lang == "python":
            python.append(code)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MPLBACKEND": "Agg",
    }
    if python:
        (tmp_path / "page.py").write_text("\n".join(python))
        done = subprocess.run(
            [sys.executable, "page.py"], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, "\n".join(python) + "\n" + done.stderr[-3000:]
    for lang, code, title in blocks(page):
        if lang == "bash" and not title:
            done = subprocess.run(
                ["bash", "-e", "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
            )
            assert done.returncode == 0, code + "\n" + done.stderr[-3000:]


@pytest.mark.expensive
def test_the_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "cli" / "index.html").read_text().count("--budget") >= 2
    assert "Task" in (tmp_path / "site" / "api" / "index.html").read_text()
