"""The documentation: a short README, links that resolve, no dates outside the generated table, and generated
tables that match the recorded results (bench/report.py). Pure: reads files only."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DATE = re.compile(r"20\d\d-\d\d-\d\d")


def load_report() -> ModuleType:
    """bench/report.py, imported from its path (bench/ is not a package)."""
    path = ROOT / "bench" / "report.py"
    spec = importlib.util.spec_from_file_location("k2jobs_bench_report", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


report = load_report()


def relative_links(path: Path) -> list[str]:
    """Every link target in a Markdown file that is neither a URL nor an anchor in the same file."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    targets = [target.split("#")[0] for target in LINK.findall(text)]
    return [target for target in targets if target and not re.match(r"^[a-z]+:", target)]


def test_the_readme_is_a_landing_page() -> None:
    assert len(README.read_text().splitlines()) <= 260


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_points_to_a_file_that_exists(path: Path) -> None:
    missing = [target for target in relative_links(path) if not (path.parent / target).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


def test_the_readme_links_to_every_guide() -> None:
    linked = {(README.parent / target).resolve() for target in relative_links(README)}
    assert not [doc.name for doc in DOCS if doc.resolve() not in linked]


def test_the_readme_has_no_date_outside_the_performance_table() -> None:
    text = README.read_text()
    start, end = report.PERFORMANCE
    outside = text[: text.index(start)] + text[text.index(end) :]
    assert not DATE.findall(outside)


def test_the_generated_tables_are_what_report_py_renders_from_the_newest_results() -> None:
    records = report.load_records()
    assert report.newest(records)["date"] == max(record["date"] for record in records)
    blocks = report.expected_blocks(records)
    assert {ROOT / "README.md", ROOT / "bench" / "README.md"} <= set(blocks)
    for path, (markers, block) in blocks.items():
        assert report.current_block(path.read_text(), markers) == block, f"run python bench/report.py ({path.name})"


def test_every_recorded_result_parses_with_date_command_and_figures() -> None:
    files = report.record_files()
    assert files, "no recorded results in bench/results"
    for path in files:
        record = json.loads(path.read_text())
        assert re.fullmatch(r"20\d\d-\d\d-\d\d(T\d\d:\d\d(:\d\d)?Z)?", record["date"]), path.name
        assert path.name.startswith(record["date"][:16].rstrip("Z").replace(":", "-")), path.name
        assert isinstance(record["command"], str) and record["command"], path.name
        assert isinstance(record["figures"], dict), path.name
        for name, goal in record.get("targets", {}).items():
            assert {"value", "target", "met"} <= goal.keys(), f"{path.name}: {name}"


def test_only_dated_files_count_as_records(tmp_path: Path) -> None:
    for name in ("latest.json", "smoke.json", "shapes.json", "2026-12-07T10-15-bench-check-c3b57d8.json"):
        (tmp_path / name).write_text(json.dumps({"date": "2026-12-07", "command": "x", "figures": {}, "notes": ""}))
    assert [path.name for path in report.record_files(tmp_path)] == ["2026-12-07T10-15-bench-check-c3b57d8.json"]


def test_a_block_is_replaced_between_its_markers_only() -> None:
    text = "before\n<!-- performance:start -->\nold\n<!-- performance:end -->\nafter\n"
    new = report.with_block(text, report.PERFORMANCE, "new")
    assert new == "before\n<!-- performance:start -->\nnew\n<!-- performance:end -->\nafter\n"
    assert report.current_block(new, report.PERFORMANCE) == "new"


def test_the_settings_table_lists_every_variable_config_reads() -> None:
    """docs/configuration.md names each K2_* variable that k2jobs/config.py reads, and no other."""
    import re

    code = set(re.findall(r'"(K2_[A-Z0-9_]+)', (ROOT / "k2jobs" / "config.py").read_text()))
    code = {"K2_KAFKA_OPT_<NAME>" if name == "K2_KAFKA_OPT_" else name for name in code}
    table = set(re.findall(r"^\| `(K2_[A-Z0-9_<>]+)`", (ROOT / "docs" / "configuration.md").read_text(), re.M))
    assert table == code


def test_only_config_reads_k2_variables() -> None:
    import re

    for path in (ROOT / "k2jobs").rglob("*.py"):
        if path.name == "config.py":
            continue
        reads = re.findall(r"(?:environ\.get|getenv|environ\[)\(?\s*[\"'](K2_[A-Z0-9_]+)", path.read_text())
        assert reads == [], f"{path} reads {reads}"
