"""The documentation stays true to the tree: the README fits a screen's worth of reading (at most 300
lines), runs CI's own test command, and every relative link and every repository path the docs name
resolves, so a moved module or page shows up here instead of as a dead link."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_PATH = re.compile(r"`((?:ltx_ascend|tests|docs)/[\w./-]+\.(?:py|md|json))(?:::\w+)?`")
DOC_REF = re.compile(r"\bdocs/[\w/.-]+\.md\b")


def _docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and line.startswith("#"):
            slug = _slug(line.lstrip("#"))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(path: Path) -> list[str]:
    """Every relative link of `path` whose file or heading anchor does not exist, and every
    `ltx_ascend/...`, `tests/...` or `docs/...` path it cites in backticks that is not in the tree."""
    text = path.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(f"{path.name}: {target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{path.name}: {target} (no such heading)")
    for cited in CODE_PATH.findall(text):
        if not (ROOT / cited).exists():
            broken.append(f"{path.name}: `{cited}` (not in the tree)")
    return broken


def test_readme_fits_in_300_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_readme_runs_the_ci_test_command():
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("python3 -m venv")]
    assert len(ci) == 1 and ci[0] in (ROOT / "README.md").read_text().splitlines()


def test_every_link_and_cited_path_in_the_docs_resolves():
    broken = [problem for path in _docs() for problem in broken_links(path)]
    assert not broken, "\n".join(broken)


def test_every_docs_page_the_code_cites_exists():
    cited = {
        (source.relative_to(ROOT), ref)
        for folder in ("ltx_ascend", "tests")
        for source in (ROOT / folder).rglob("*.py")
        if source.name != "test_docs.py"
        for ref in DOC_REF.findall(source.read_text())
    }
    assert cited  # the scan finds the pages the code points to
    missing = [f"{source}: {ref}" for source, ref in sorted(cited) if not (ROOT / ref).exists()]
    assert not missing, "\n".join(missing)


def test_the_guide_commands_page_names_only_pipelines_that_exist():
    """docs/design/pipelines.md lists the LTX-2.3 Ascend guide's commands (seven: the guide has none for
    ti2vid_one_stage) that tests/test_run_inputs.py runs; a renamed pipeline must be renamed there."""
    from ltx_ascend.engine.stages import PIPELINES

    page = (ROOT / "docs" / "design" / "pipelines.md").read_text()
    block = page.split("## The LTX-2.3 Ascend guide's commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    named = [line.split()[1] for line in block.splitlines() if line.startswith("ltx-run ")]
    assert len(named) == 7 and len(set(named)) == 7 and set(named) <= set(PIPELINES)


def test_a_dead_link_a_missing_heading_and_a_moved_module_are_reported(tmp_path):
    (tmp_path / "other.md").write_text("# A heading, with `code`\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[fine](other.md#a-heading-with-code) [gone](missing.md) [bad anchor](other.md#not-a-heading)\n"
        "[web](https://example.com) `ltx_ascend/store.py` `ltx_ascend/no_such_module.py` "
        "`tests/test_docs.py::test_readme_fits_in_300_lines`\n"
    )
    assert broken_links(page) == [
        "page.md: missing.md (no such file)",
        "page.md: other.md#not-a-heading (no such heading)",
        "page.md: `ltx_ascend/no_such_module.py` (not in the tree)",
    ]
