"""`flint --version`, and `--help` on every command and subcommand, with help text for every argument."""

import argparse

import pytest

import flint
from flint.cli import main

_SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


def _help_of(path: list[str], capsys, monkeypatch) -> tuple[argparse.ArgumentParser, str]:
    seen = []
    real = argparse.ArgumentParser.print_help

    def record(self, file=None):
        seen.append(self)
        real(self, file)

    monkeypatch.setattr(argparse.ArgumentParser, "print_help", record)
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0, path
    assert seen, f"flint {' '.join(path)} --help printed no parser's help"
    return seen[-1], capsys.readouterr().out


def _walk(path, capsys, monkeypatch, missing: list, visited: list) -> None:
    parser, text = _help_of(path, capsys, monkeypatch)
    visited.append(" ".join(path))
    assert "usage:" in text
    for action in parser._actions:
        if isinstance(action, _SKIP):
            continue
        if not (action.help or "").strip() and action.help != argparse.SUPPRESS:
            missing.append(f"flint {' '.join(path)}: {'/'.join(action.option_strings) or action.dest}")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name in action.choices:
                _walk([*path, name], capsys, monkeypatch, missing, visited)


def test_every_command_has_help_with_text_for_every_argument(capsys, monkeypatch):
    missing, visited = [], []
    _walk([], capsys, monkeypatch, missing, visited)
    for expected in ("serve", "bench", "bench engine", "bench cluster", "load run", "load compare", "keys"):
        assert expected in visited
    assert not missing, "arguments without help text:\n" + "\n".join(missing)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"flint {flint.__version__}"
