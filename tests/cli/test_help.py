"""What needs no server: every command's help, progress output, and that the CLI
package imports nothing of the server (the wheel test proves it installs alone)."""

from __future__ import annotations

import io

import pytest

from fleet.cli.main import main

COMMANDS = [
    [],
    ["login"],
    ["logout"],
    ["push"],
    ["compress"],
    ["release"],
    ["release", "create"],
    ["deploy"],
    ["status"],
    ["logs"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "edgefleet")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: edgefleet" in text and "exit codes:" in text


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log():
    from fleet.cli.output import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, log = Terminal(), io.StringIO()
    for stream in (tty, log):
        progress = Progress("job 7", stream)
        for fraction, step in (
            (0, "queued"),
            (0.31, "int8: measure"),
            (0.33, "int8: measure"),
            (1, "succeeded"),
        ):
            progress.update(fraction, step)
        progress.done()
    assert "\r" in tty.getvalue() and "[#########" in tty.getvalue()
    assert log.getvalue().splitlines() == [
        "job 7   0% queued",
        "job 7  31% int8: measure",
        "job 7 100% succeeded",
    ]


def test_cli_package_imports_nothing_of_the_server():
    import ast
    from pathlib import Path

    import fleet.cli

    root = Path(fleet.cli.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert node.module.split(".")[0] not in {
                    "django",
                    "rest_framework",
                    "fleet",
                    "compression",
                    "devices",
                    "ota",
                }, path
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name.split(".")[0] not in {"django", "fleet", "requests"}, path
