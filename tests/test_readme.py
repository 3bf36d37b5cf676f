"""The README and docs/ promise what the code does: their commands parse, their links resolve,
and the README's Python example runs (at a tiny size)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

# .ci/run installs and tests with the second command; keep them in step.
SETUP_COMMANDS = [
    "pip install torch==2.14.1 torchvision==0.29.1 && pip install -e . && hwprune demo",
    'pip install -e ".[test]" && python -m pytest',
]

# The README's example at a tiny size: each (what the README says, what the test runs).
TINY = {
    "bash": [("--width 0.5", "--width 0.25"), ("--epochs 10", "--epochs 1")],
    "python": [("evaluations=60", "evaluations=4"), ("finetune_epochs=5", "finetune_epochs=0")],
}

FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of ``path`` in ``lang``, indentation removed."""
    out = []
    for m in FENCE.finditer(path.read_text(encoding="utf-8")):
        if m.group(2) == lang:
            indent = len(m.group(1))
            out.append("\n".join(line[indent:] for line in m.group(3).splitlines()) + "\n")
    return out


def hwprune_commands(script: str) -> list[list[str]]:
    """Every ``hwprune ...`` command of a bash block, as argv (continuations joined)."""
    commands = []
    for line in script.replace("\\\n", " ").splitlines():
        line = line.split("  #", 1)[0]
        for part in re.split(r"&&|\|\||;", line):
            words = shlex.split(part, comments=True)
            if words and words[0] == "hwprune":  # "..." elides options the text shows elsewhere
                commands.append([w for w in words[1:] if w != "..."])
    return commands


def test_readme_keeps_the_two_setup_commands():
    bash = [b.strip() for b in blocks(README, "bash")]
    for command in SETUP_COMMANDS:
        assert command in bash
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[test]"' in ci and "python -m pytest" in ci


def test_readme_is_a_short_page():
    # Detail lives in docs/ (the support table by family is docs/support.md's).
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 150


# A figure is placed by what a reader can check (a date, a commit, the machine and its
# versions), never by the period of work that produced it or by how a machine was obtained.
HISTORY_WORDS = re.compile(r"\bsessions?\s+\d|\blent\b", re.I)  # \s+: across a line break
DESCRIBED = [*PAGES, ROOT / "benchmarks" / "README.md", ROOT / "benchmarks" / "RESULTS.md"]


@pytest.mark.parametrize("page", DESCRIBED, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_place_figures_by_date_commit_or_machine(page: Path):
    text = page.read_text(encoding="utf-8")
    found = [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {m.group()!r}"
        for m in HISTORY_WORDS.finditer(text)
    ]
    assert not found, f"{page.relative_to(ROOT)} speaks of its own history:\n" + "\n".join(found)


# The benchmarks are a package run from the repository root; run as a file, one of them
# would import benchmarks/oracles.py in place of the oracles package.
AS_FILE = re.compile(r"\bpython3?(?:\s+-\w+)*\s+\S*benchmarks/\w+\.py")
AS_MODULE = re.compile(r"\bpython3?\s+-m\s+benchmarks\.(\w+)")
BENCHMARK_TEXTS = [
    *DESCRIBED,
    *sorted((ROOT / "benchmarks").glob("*.sh")),
    *sorted((ROOT / "benchmarks").glob("*.py")),
]


@pytest.mark.parametrize("page", BENCHMARK_TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_benchmark_commands_run_modules_that_exist(page: Path):
    text = page.read_text(encoding="utf-8")
    assert not AS_FILE.findall(text), f"{page.name} runs a benchmark as a file"
    for name in AS_MODULE.findall(text):
        if name.isupper():  # a placeholder: python -m benchmarks.NAME
            continue
        assert (ROOT / "benchmarks" / f"{name}.py").is_file(), f"{page.name}: no benchmarks.{name}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_hwprune_command_names_a_subcommand_and_options_that_exist(page: Path):
    from hwprune.cli import build_parser

    parser = build_parser()
    commands = [c for b in blocks(page, "bash") for c in hwprune_commands(b)]
    if page == README:
        assert {c[0] for c in commands} >= {"demo", "train", "prune", "export"}
    for argv in commands:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse's answer to an unknown command or option
            pytest.fail(f"{page.name}: `hwprune {shlex.join(argv)}` does not parse ({exc})")
        assert args.command == argv[0]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_compile(page: Path):
    for i, code in enumerate(blocks(page, "python")):
        compile(code, f"{page.name}[python block {i}]", "exec")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path):
    text = page.read_text(encoding="utf-8")
    text = FENCE.sub("", text)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name} links to {target}, which does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page.name}: no #{anchor} in {file}"


def _tiny(code: str, lang: str) -> str:
    for said, run in TINY[lang]:
        assert said in code, f"the README's {lang} example no longer says {said!r}"
        code = code.replace(said, run)
    return code


@pytest.mark.slow  # ~30 s of CPU (train, measure, search, verify, export); -m slow runs it
def test_readme_python_example_runs_at_a_tiny_size(tmp_path: Path, monkeypatch):
    """The CLI block's `hwprune train` makes vgg.pt; the Python block prunes it and loads it.

    Tiny: a width-0.25 model trained one epoch, 4 evaluations, no fine-tuning (see TINY).
    """
    (script,) = [b for b in blocks(README, "bash") if "hwprune train" in b]
    (train,) = [c for c in hwprune_commands(_tiny(script, "bash")) if c[0] == "train"]
    from hwprune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*train, "--quiet"]) == 0
    assert (tmp_path / "vgg.pt").is_file()
    (code,) = [c for c in blocks(README, "python") if "hwprune.prune(model=" in c]
    namespace: dict = {}
    exec(compile(_tiny(code, "python"), "README.md[python]", "exec"), namespace)
    result = namespace["result"]
    assert result.evaluations >= 4 and result.all_met
    assert (tmp_path / "runs" / "vgg" / "report.md").is_file()
    assert namespace["model"].training is False
