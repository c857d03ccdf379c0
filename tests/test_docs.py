"""The README and docs/ work as written.

* Every relative link (and its #anchor) resolves.
* Every shell block (```bash / ```sh) runs, in order, from the root of a fresh copy of
  the repository, in a clean environment (``env -i`` with only PATH, HOME and JAVA_HOME),
  after the quick-start step (``make demo``, then ``source .venv/bin/activate``); then the
  three commands ``make demo`` prints under "Try next". A block or command that repeats,
  verbatim, one that already ran is not run twice.
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
import tempfile
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


class DocsRun:
    """The documented commands, run in the background from a fresh copy.

    ``tests/conftest.py`` starts it when the session begins (the commands start their own
    Spark sessions and spend most of their time waiting on them, so they overlap the
    rest of the suite) and runs this file's tests last.
    """

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="spark_gmm_docs_"))
        self.proc: subprocess.Popen[str] | None = None
        self.skipped: str | None = None

    def start(self) -> None:
        stamp = ROOT / ".venv" / ".installed-stamp"
        if not stamp.exists():
            self.skipped = "needs the project's .venv (make test creates it)"
            return
        if stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
            # make demo in the copy would reinstall the linked .venv from the copy.
            self.skipped = "the .venv is older than pyproject.toml: run make venv first"
            return
        repo, home = self.base / "repo", self.base / "home"
        repo.mkdir()
        home.mkdir()
        _fresh_copy(repo)
        lines = ["set -euo pipefail", "make demo 2>&1 | tee .demo.out"]
        lines.append("source .venv/bin/activate")
        lines += ["PS4='+ ${SECONDS}s: '", "set -x"]  # each command with its start time
        documented = []
        for page in PAGES:
            for code, runnable in shell_blocks(page.read_text()):
                if runnable and code.strip() != "source .venv/bin/activate":
                    commands = [line.split("#")[0].strip() for line in code.splitlines()]
                    lines.append(f'echo ">>> $SECONDS s: {page.relative_to(ROOT)}"')
                    if set(filter(None, commands)) <= set(documented):
                        continue  # the same commands, verbatim, already ran above
                    lines.append(code)
                    documented += commands
        # The three commands `make demo` prints under "Try next" run too (those a page
        # already ran, verbatim, are not run twice).
        (repo / ".documented.txt").write_text("\n".join(filter(None, documented)) + "\n")
        lines += [
            'echo ">>> $SECONDS s: make demo: Try next"',
            r"sed -n '/^Try next/,$p' .demo.out"
            r" | sed -n 's/^  \(.*[^ ]\) *# .*$/\1/p' > .next.sh",
            'test "$(wc -l < .next.sh)" -eq 3',
            'while IFS= read -r cmd; do grep -qxF -- "$cmd" .documented.txt'
            ' || { echo "+ $cmd"; eval "$cmd" < /dev/null > /dev/null; }; done < .next.sh',
            'echo ">>> $SECONDS s: end"',
        ]
        script = self.base / "docs.sh"
        script.write_text("\n".join(lines) + "\n")
        env = [f"{k}={v}" for k, v in _clean_env(home).items()]
        self.proc = subprocess.Popen(
            ["env", "-i", *env, "bash", str(script)],
            cwd=repo,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def result(self, timeout: float = 1200) -> tuple[int, str]:
        if self.proc is None:
            self.start()
        if self.skipped:
            pytest.skip(self.skipped)
        assert self.proc is not None
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            shutil.rmtree(self.base, ignore_errors=True)
        return self.proc.returncode, out


def test_every_documented_command_runs_as_written(request):
    run = getattr(request.config, "_spark_gmm_docs_run", None) or DocsRun()
    code, output = run.result()
    # Where the time went (seconds since the start at each page), for whoever trims the
    # suite: .pytest_cache/v/spark_gmm/docs_run_marks.
    marks = re.findall(r"^(?:>>> |\+ \d+s: ).*$", output, re.M)
    request.config.cache.set("spark_gmm/docs_run_marks", marks)
    assert code == 0, output[-6000:]
    # The quick start ends by naming the next commands.
    assert "Try next" in output, output[-3000:]
