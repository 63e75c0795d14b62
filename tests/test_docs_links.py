"""Every relative link in README.md and docs/ points at a file or folder of the repository, and
every #anchor at a heading of its target page (GitHub's heading ids); every test, module path
(``dinossl.…``) and ``dino … --flag`` the pages name exists."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from dinossl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks."""
    lines, in_code = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        if not in_code:
            lines.append(line)
    return lines


def heading_id(title: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped (hyphens and underscores
    kept), spaces to hyphens."""
    title = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Ids of the page's headings, with GitHub's -1, -2 ... suffixes for repeated ones."""
    seen: dict[str, int] = {}
    ids = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = heading_id(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        ids.add(base if count == 0 else f"{base}-{count}")
    return ids


def relative_links(page: Path) -> list[str]:
    links = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK.findall(line):
            if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # skip https:, mailto: ...
                links.append(target)
    return links


def test_heading_ids_follow_github():
    assert heading_id("Where the photometric augmentation runs: `data.photometric`") == (
        "where-the-photometric-augmentation-runs-dataphotometric")
    assert heading_id("k-NN (`dino eval knn`)") == "k-nn-dino-eval-knn"
    assert heading_id("CIFAR-10 figures") == "cifar-10-figures"


def test_link_scanner_sees_links_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](b.md#c) ![img](fig.png) [web](https://example.org)\n"
                    "```\n[not](in-code.md)\n```\n## Title\n", encoding="utf-8")
    assert relative_links(page) == ["b.md#c", "fig.png"]
    assert anchors(page) == {"title", "title-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    broken = []
    for link in relative_links(page):
        path_part, _, anchor = link.partition("#")
        target = (page.parent / path_part).resolve() if path_part else page
        if not target.exists() or REPO not in (target, *target.parents):
            broken.append(f"{link}: no such file in the repository")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading #{anchor} in {target.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_docs_are_found():
    names = {p.relative_to(REPO).as_posix() for p in PAGES}
    assert {"README.md", "docs/training.md", "docs/architecture.md"} <= names


TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+))?`")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_tests_exist(page):
    """A claim that names the test proving it names a test that exists."""
    missing = []
    for path, name in TEST_REFERENCE.findall(page.read_text()):
        target = REPO / path
        if not target.is_file():
            missing.append(path)
        elif name and not re.search(rf"^def {name}\b", target.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name}")
    assert not missing, f"{page.name} names tests that do not exist: {missing}"


# --------------------------------------------------------------------------------------------
# Module paths and command-line flags the pages name
# --------------------------------------------------------------------------------------------

MODULE_PATH = re.compile(r"(?<![\w./-])dinossl(?:\.[A-Za-z_]\w*)+")  # not a file name (.dinossl.lock)
FROM_IMPORT = re.compile(r"^[ \t]*from[ \t]+(dinossl(?:\.\w+)*)[ \t]+import[ \t]+(?:\(([\w\s,]+)\)|([\w \t,]+))",
                         re.MULTILINE)
COMMAND = re.compile(r"(?:^|[\s(`;&|])(?:dino|-m dinossl)\s+([^`|;&#>]*)")


def resolve(dotted: str) -> bool:
    """Whether ``dotted`` names an importable module of the package or an attribute of one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        name = ".".join(parts[:cut])
        try:
            target = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not name.startswith(exc.name) and exc.name != name:
                raise  # the module exists but needs something missing: not a wrong path
            continue
        for attribute in parts[cut:]:
            if not hasattr(target, attribute):
                return False
            target = getattr(target, attribute)
        return True
    return False


def named_module_paths(text: str) -> set[str]:
    """``dinossl.a.b`` anywhere on a page, and each name of ``from dinossl.a import x, y``."""
    names = set(MODULE_PATH.findall(text))
    for module, in_parentheses, on_the_line in FROM_IMPORT.findall(text):
        imported = in_parentheses or on_the_line
        names |= {f"{module}.{name.strip()}" for name in imported.split(",") if name.strip()}
    return names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_module_paths_exist(page):
    """Every module, class or function a page names by its dotted path can be imported."""
    missing = sorted(name for name in named_module_paths(page.read_text(encoding="utf-8")) if not resolve(name))
    assert not missing, f"{page.relative_to(REPO)} names module paths that do not exist: {missing}"


def test_module_path_checker_fails_on_a_wrong_path():
    assert resolve("dinossl.eval.classification.knn.paired_bootstrap_interval")
    assert not resolve("dinossl.eval.protocols")
    assert not resolve("dinossl.hub.no_such_model")
    assert named_module_paths("remove run/.dinossl.lock, see dinossl.outputs.LOCK_NAME") == {"dinossl.outputs.LOCK_NAME"}
    assert named_module_paths("from dinossl.weights import load_backbone, load_network\n") == {
        "dinossl.weights", "dinossl.weights.load_backbone", "dinossl.weights.load_network"}


REPOSITORY_PATH = re.compile(r"`((?:src/dinossl|benchmarks|scripts|tests|\.ci|figures)/[\w./-]*)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_paths_exist(page):
    """Every file or folder of the repository a page names in code (`src/dinossl/...`,
    `benchmarks/...`, `scripts/...`, `tests/...`) exists."""
    missing = sorted({path for path in REPOSITORY_PATH.findall(page.read_text(encoding="utf-8"))
                      if not (REPO / path.rstrip(".")).exists()})
    assert not missing, f"{page.relative_to(REPO)} names paths that do not exist: {missing}"


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def command_lines(text: str) -> list[list[str]]:
    """The words after ``dino`` (or ``-m dinossl``) in code blocks (continuation lines joined)
    and in inline code spans, up to a pipe, ``;``, ``&&``, a redirection or a comment."""
    found, in_code, pending = [], False, ""
    for line in text.splitlines():
        if FENCE.match(line):
            in_code, pending = not in_code, ""
            continue
        if in_code:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            chunks, pending = [pending + line], ""
        else:
            chunks = re.findall(r"`([^`]+)`", line)
        for chunk in chunks:
            found += [match.group(1).split() for match in COMMAND.finditer(chunk)]
    return found


def check_command(root: argparse.ArgumentParser, words: list[str]) -> list[str]:
    """What is wrong with one named command line: an unknown (sub)command or flag."""
    parser, path, rest = root, ["dino"], list(words)
    while rest and subcommands(parser):
        if rest[0] not in subcommands(parser):
            # "dino train: error: ..." quoted output, "dino COMMAND" placeholders
            return [f"{' '.join(path)} {rest[0]}: no such command"] if re.fullmatch(r"[a-z]+", rest[0]) else []
        parser = subcommands(parser)[rest[0]]
        path.append(rest.pop(0))
    known = option_strings(parser)
    return [f"{' '.join(path)} {word.split('=')[0]}: no such option" for word in rest
            if word.startswith("-") and word.split("=")[0] not in known]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_commands_and_flags_exist(page):
    """Every ``dino ... --flag`` a page shows is accepted by that command's parser."""
    root = build_parser()
    wrong = [problem for words in command_lines(page.read_text(encoding="utf-8"))
             for problem in check_command(root, words)]
    assert not wrong, f"{page.relative_to(REPO)}: {wrong}"


def test_command_checker_fails_on_a_wrong_flag():
    root = build_parser()
    lines = command_lines("Run `dino eval knn W --data d --no-such-flag` or\n```bash\n"
                          "torchrun --nproc_per_node=2 -m dinossl train \\\n  --output r --bogus\n```\n")
    assert [check_command(root, words) for words in lines] == [
        ["dino eval knn --no-such-flag: no such option"], ["dino train --bogus: no such option"]]
    assert check_command(root, ["evaluate", "x"]) == ["dino evaluate: no such command"]
    assert check_command(root, ["train:", "error:", "--x"]) == []


def leaf_commands(parser: argparse.ArgumentParser, path: str = "dino") -> dict[str, argparse.ArgumentParser]:
    children = subcommands(parser)
    if not children:
        return {path: parser}
    return {name: leaf for child, sub in children.items() for name, leaf in leaf_commands(sub, f"{path} {child}").items()}


# The README's "Commands at a glance" says which commands lack which of the common options.
COMMON_OPTIONS = ("--output", "--overwrite", "--no-progress", "--config", "--device")
WITHOUT = {
    "--overwrite": {"dino train", "dino study"},
    "--no-progress": {"dino export", "dino plot"},
    "--config": {"dino export", "dino plot"},
    "--device": {"dino export", "dino plot"},
}


def test_the_common_options_are_where_the_readme_says():
    """Each command takes --output, --overwrite, --no-progress, --config and --device except
    the ones the README names, and the README names each exception."""
    commands = leaf_commands(build_parser())
    lacking = {flag: {name for name, parser in commands.items() if flag not in option_strings(parser)}
               for flag in COMMON_OPTIONS}
    assert lacking == {flag: WITHOUT.get(flag, set()) for flag in COMMON_OPTIONS}
    readme = " ".join(prose_lines((REPO / "README.md").read_text(encoding="utf-8")))
    clauses = re.split(r"[;.] ", " ".join(readme.split()))
    for flag, names in WITHOUT.items():
        assert any(f"`{flag}`" in clause and all(f"`{name}`" in clause for name in names) for clause in clauses), (
            f"README.md does not say in one clause that {', '.join(sorted(names))} take no {flag}")
