"""The README and docs/ work as written.

* Every relative link (and its #anchor) resolves.
* Every shell block (```bash / ```sh) runs, in order, from the root of a fresh copy of
  the repository, in a clean environment (``env -i`` with only PATH, HOME and JAVA_HOME),
  after the quick-start step (``make demo``, then ``source .venv/bin/activate``).
  A block whose info string says ``example`` (```bash example) stands for a user's
  cluster, lake or a long run, and is shown, not run.

The copy holds the files git would put in a clone (tracked, and new files not ignored),
and the project's ``.venv`` (linked, with its install stamp newer than pyproject.toml,
so ``make demo`` does not reinstall).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
SHELLS = {"bash", "sh", "shell", "console"}


def shell_blocks(text: str) -> list[tuple[str, bool]]:
    """(code, runnable) of every shell block, in order."""
    out = []
    for info, code in FENCE.findall(text):
        words = info.split()
        if words and words[0] in SHELLS:
            out.append((code, "example" not in words[1:]))
    return out


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, re.MULTILINE)}


def test_every_relative_link_resolves():
    broken = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_pages_have_runnable_commands_and_examples_are_marked():
    readme = shell_blocks((ROOT / "README.md").read_text())
    assert any(runnable for _, runnable in readme)
    # Commands that stand for a user's cluster or lake are marked, never run here.
    for page in PAGES:
        for code, runnable in shell_blocks(page.read_text()):
            if runnable:
                assert not re.search(r"s3a://|hdfs://|spark://master-host|lake\.", code), (
                    f"{page.name}: a block that points at a user's cluster must be "
                    f"marked 'example':\n{code}"
                )


def _fresh_copy(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)  # keeps mtimes: make sees nothing to rebuild
    (dest / ".venv").symlink_to(ROOT / ".venv")


def _clean_env(home: Path) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        env["JAVA_HOME"] = java_home
    return env


def test_every_documented_command_runs_as_written(tmp_path):
    if not (ROOT / ".venv" / ".installed-stamp").exists():
        pytest.skip("needs the project's .venv (make test creates it)")
    repo = tmp_path / "repo"
    repo.mkdir()
    _fresh_copy(repo)
    home = tmp_path / "home"
    home.mkdir()
    lines = ["set -euo pipefail", "make demo", "source .venv/bin/activate"]
    for page in PAGES:
        for code, runnable in shell_blocks(page.read_text()):
            if runnable and code.strip() != "source .venv/bin/activate":
                lines.append(f"echo '>>> {page.relative_to(ROOT)}'")
                lines.append(code)
    script = tmp_path / "docs.sh"
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        ["env", "-i", *(f"{k}={v}" for k, v in _clean_env(home).items()), "bash", str(script)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    # The quick start ends by naming the next commands, and they are among those that ran.
    assert "Try next:" in done.stdout, done.stdout[-3000:]
