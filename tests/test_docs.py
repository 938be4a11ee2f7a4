"""The docs hold together: every relative link resolves, every page is reachable from
the README, the changelog names every migration, the settings table is the settings
model, and CI runs the README's test command.

Links are checked as GitHub renders them: outside code, a relative target must name a
file of the repository, and an anchor in a Markdown file must be the anchor of one of
its headings (lower case, punctuation dropped, spaces as hyphens, ``-1``, ``-2`` for
repeats).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
import typer

from listener.cli.app import app
from listener.config import Settings, shown_default
from listener.migrate import load_migrations
from tests.support.paths import ROOT

PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "CONTRIBUTING.md",
        ROOT / "CHANGELOG.md",
        ROOT / "grafana" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.MULTILINE | re.DOTALL)
CODE = re.compile(r"`[^`]*`")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans."""
    return CODE.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page``."""
    seen: Counter[str] = Counter()
    found = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6} (.+)$", line)
        if match is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", match[1].strip().lower()).replace(" ", "-")
        found.add(f"{slug}-{seen[slug]}" if seen[slug] else slug)
        seen[slug] += 1
    return found


def relative_links(page: Path) -> list[str]:
    """The targets of the page's links that are not URLs with a scheme."""
    targets = LINK.findall(prose(page.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists() or ROOT.resolve() not in file.parents:
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_links_are_found_and_checked() -> None:
    """The checker sees the links the docs are made of (a parser that finds none would
    pass every page), and refuses a broken one."""
    readme = ROOT / "README.md"
    assert {"docs/cli.md", "CONTRIBUTING.md#run-the-tests", "#quickstart"} <= set(
        relative_links(readme)
    )
    assert sum(len(relative_links(page)) for page in PAGES) > 50
    assert "run-the-tests" in anchors(ROOT / "CONTRIBUTING.md")
    assert "pgwake-bench-workload" in anchors(ROOT / "docs" / "cli.md")
    assert "no-such-heading" not in anchors(readme)


def test_every_page_is_linked_from_the_readme() -> None:
    readme = relative_links(ROOT / "README.md")
    linked = {target.partition("#")[0] for target in readme}
    pages = {str(p.relative_to(ROOT)) for p in PAGES if p.parent == ROOT / "docs"}
    assert pages
    assert pages | {"CONTRIBUTING.md", "CHANGELOG.md"} <= linked


def test_changelog_names_every_migration() -> None:
    """Each migration has its entry, saying whether it breaks workers of the version
    before, as the mark on the first line of its file says."""
    changelog = (ROOT / "CHANGELOG.md").read_text()
    migrations = load_migrations()
    assert migrations
    for migration in migrations:
        name = migration.label
        entry = changelog.split(f"`{name}`", 1)
        assert len(entry) == 2, f"CHANGELOG.md has no entry for {name}"
        words = " ".join(entry[1].split("\n- ", 1)[0].lower().split())
        assert "older workers" in words, name
        said = {mark for mark in ("breaking", "compatible") if mark in words}
        assert said == {"breaking" if migration.breaking else "compatible"}, name


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.*?)\n```", readme, re.DOTALL)
    test_command = next(c for c in commands if c.endswith("pytest"))
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_settings_table_is_the_settings_model() -> None:
    """docs/configuration.md has one row per setting, with its environment variable,
    flags `pgwake run` takes for that setting, and its default (as the model's field
    says it in words where it has no literal one: config.shown_default)."""
    page = (ROOT / "docs" / "configuration.md").read_text()
    row = re.compile(r"^\| `(\w+)` \| (.*?) \| `(PGWAKE_\w+)` \| (.*?) \| .* \|$", re.M)
    rows = {m[1]: (m[2], m[3], m[4]) for m in row.finditer(page)}
    assert set(rows) == set(Settings.model_fields)
    run = typer.main.get_command(app).commands["run"]
    options = {param.name: {*param.opts, *param.secondary_opts} for param in run.params}
    for name, (flags, env, default) in rows.items():
        assert env == f"PGWAKE_{name.upper()}", name
        named = set(re.findall(r"--[a-z-]+", flags))
        assert named, name
        assert named <= options[name], (name, named, options[name])
        value = Settings.model_fields[name].default
        if isinstance(value, bool):
            assert default == str(value).lower(), name
        elif isinstance(value, int | float):
            assert float(default) == value, name
        elif isinstance(value, str):
            assert default == f"`{value}`", name
        else:
            assert default.strip("`") == shown_default(name), (name, default)
