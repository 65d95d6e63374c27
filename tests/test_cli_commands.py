"""The `hydracat` command: the product's commands, plus those installed packages add by entry point."""

import pytest

from flows import cli


def test_bench_and_demo_come_from_entry_points_and_product_commands_win():
    known = cli.commands()
    assert known["bench"] == "bench.cli:add_bench_command" and known["demo"] == "bench.demo:add_demo_command"
    assert {name: known[name] for name in cli.COMMANDS} == cli.COMMANDS
    assert not any(spec.startswith("bench") for spec in cli.COMMANDS.values())


def test_an_added_command_that_cannot_load_is_left_out_of_help_and_refused_by_name(monkeypatch, capsys):
    monkeypatch.setattr(cli, "commands", lambda: cli.COMMANDS | {"bench": "no_such_bench_module:add"})
    with pytest.raises(SystemExit) as help_exit:
        cli.main(["--help"])
    assert help_exit.value.code == 0
    shown = capsys.readouterr().out
    assert "serve" in shown and "bench" not in shown
    assert cli.main(["bench", "merge"]) == 2
    error = capsys.readouterr().err
    assert "hydracat bench cannot be loaded here" in error and "hydracat[bench]" in error
    assert "Traceback" not in error
