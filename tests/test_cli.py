"""The `rlx` command: subcommands reach the `python -m` modules, `--help` lists every config section."""

import dataclasses
import importlib
import importlib.util
import tomllib
from pathlib import Path

import pytest

from rlx import cli
from rlx.config import Config

REPO = Path(__file__).resolve().parents[1]


def test_the_console_script_is_declared():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["rlx"] == "rlx.cli:main"


def test_help_lists_commands_and_every_config_section(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("train", "eval", "export", "serve", "plan", "warmstart"):
        assert f"\n  {command} " in text
    for field in dataclasses.fields(Config):
        assert f"\n  {field.name} " in text


def test_launch_help_names_the_config_sections(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "config sections: run, model, data, rollout, reward" in capsys.readouterr().out


@pytest.mark.parametrize("command, module, expected", [("train", "rlx.launch", ["--config", "c.yaml", "run.steps=3"]),
                                                       ("plan", "rlx.launch", ["--config", "c.yaml", "--dry-run"]),
                                                       ("eval", "rlx.eval", ["--run", "r"]),
                                                       ("scale", "rlx.scale", ["--run", "r", "--generators", "2"])])
def test_subcommands_hand_their_arguments_to_the_module(monkeypatch, command, module, expected):
    seen = []
    monkeypatch.setattr(importlib.import_module(module), "main", lambda argv: seen.append(argv) or 7)
    given = [arg for arg in expected if arg != "--dry-run"]
    assert cli.main([command, *given]) == 7 and seen == [expected]


def test_unknown_commands(capsys):
    assert cli.main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_export_dispatches_to_rlx_export(monkeypatch):
    seen = []
    monkeypatch.setattr(importlib.import_module("rlx.export"), "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["export", "--run", "r"]) == 0 and seen == [["--run", "r"]]
