"""Benchmarks rewrite only their own section of RESULTS.md and end with their RESULT line."""

from benchmarks.results_table import RESULTS_PATH, report, write_section


def test_write_section_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("A", "first a", path)
    write_section("B", "```\n## not a heading inside a fence\n```", path)
    write_section("A", "second a", path)
    text = path.read_text()
    assert "first a" not in text and text.index("## A") < text.index("second a") < text.index("## B")
    assert "## not a heading inside a fence" in text and text.count("## A") == 1


def test_report_prints_the_result_line_last_and_can_leave_results_alone(capsys):
    before = RESULTS_PATH.read_text()
    report("T", "| a |", "x=1.00", write=False)
    assert capsys.readouterr().out.splitlines() == ["| a |", "RESULT x=1.00"]
    assert RESULTS_PATH.read_text() == before
