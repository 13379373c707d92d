"""The README's two commands and CI stay in step."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = readme_commands()
    assert (REPO / "README.md").read_text().startswith("# rlx\n\n```bash\n")
    assert "python -m rlx.launch --config configs/demo.yaml" in demo and demo.startswith("pip install")
    assert "pytest" in tests and tests.startswith("pip install")


def test_ci_runs_the_readme_test_command():
    _, tests = readme_commands()
    assert tests in (REPO / ".ci" / "run").read_text()


def test_required_top_level_exists():
    for name in ("rlx", "pallas_kernels", "configs", "launch", "tests", "benchmarks", "pyproject.toml", "README.md", ".ci/run"):
        assert (REPO / name).exists(), name
