"""Run `dtm-hf` subcommands in-process: the same parser and error path as the console script, without the
start-up cost of a subprocess."""

from dtm_hf.cli import main as cli_main


def dtm(command: str, *argv) -> int:
    """The exit code of `dtm-hf COMMAND ARGV...` (0 when it returned normally)."""
    try:
        cli_main([command, *map(str, argv)])
    except SystemExit as exit_:
        return exit_.code
    return 0


def one_error_line(capsys, command: str) -> str:
    """The single `dtm-hf COMMAND: error: ...` line on stderr (asserts there is exactly one)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"dtm-hf {command}: error: ")]
    assert len(errors) == 1, lines
    return errors[0]
