"""The `dtm-hf` command: one subcommand per Disperse-Then-Merge step.

    dtm-hf distribute --dataset data.jsonl --n_clusters 4 --method kmeans --output_dir data
    dtm-hf train --config recipes/tiny/dtm_lora.yaml --cluster all_clusters
    dtm-hf merge --submodels out/cluster_0 out/cluster_1 --output_dir merged
    dtm-hf run                                  # the offline demo: the whole pipeline on CPU

Every subcommand takes `--config FILE.yaml` whose keys are its flags: YAML gives the defaults, flags override
them, and an unknown key is an error. Each subcommand is also `python -m dtm_hf.<module>`.
"""

import argparse
import errno
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .errors import DtmError, first_line

# Subcommand -> module; each module has `make_parser(prog)` and `main(*dataclasses)`. Imported on demand so
# that `dtm-hf --help` and each subcommand's `--help` stay instant.
COMMANDS = {
    "distribute": ("dtm_hf.distribute", "split instruction data into K cluster configs of a Hub dataset"),
    "train": ("dtm_hf.train", "train one LoRA / QLoRA sub-model per cluster with TRL's SFTTrainer"),
    "merge": ("dtm_hf.merge", "merge the sub-models with mergekit (linear, TIES, ...)"),
    "run": ("dtm_hf.run", "the whole pipeline from one recipe (an offline CPU demo by default)"),
    "evaluate": ("dtm_hf.evaluate", "held-out loss per cluster (and lm-eval tasks) for several models"),
}


def _close_progress_bars() -> None:
    """Progress bars the error cut short, closed, so that the error line starts a line of its own."""
    tqdm = sys.modules.get("tqdm.std")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def _error(prog: str, message: str) -> int:
    _close_progress_bars()
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def read_yaml(path: str, what: str) -> dict:
    """A YAML mapping from `path`; a missing file or broken YAML is one line naming the file (and the line)."""
    import yaml

    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except OSError as err:
        raise DtmError(f"cannot read the {what} {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or first_line(err)
        raise DtmError(f"the {what} {path} is not valid YAML{where}: {problem}") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise DtmError(f"the {what} {path} must be a YAML mapping of keys to values")
    return values


# Failures of the machine rather than of dtm-hf: one line each, with what to do.
KNOWN_OS_ERRORS = {
    errno.ENOSPC: "no space left on device{writing}; free space and rerun (finished work is kept)",
    errno.EDQUOT: "disk quota exceeded{writing}; free space and rerun (finished work is kept)",
    errno.EROFS: "read-only file system{at}; choose a writable output folder",
    errno.EACCES: "permission denied{at}; choose a folder you can write to",
    errno.EIO: "input/output error{at} (a failing disk or network file system?); check it and rerun",
}

# Keys users bring from TRL, transformers or older recipes, and what to write instead.
HINTS = {
    "dataset_name": "dtm-hf's key is `dataset`",
    "max_seq_length": "TRL renamed it `max_length`",
    "evaluation_strategy": "transformers renamed it `eval_strategy`",
    "torch_dtype": "transformers renamed it `dtype`",
    "no_cuda": "transformers replaced it with `use_cpu`",
}


def parse_values(parser, values: dict, argv: Sequence[str], origin: str | None = None) -> tuple:
    """`values` (a config file's or a recipe section's keys, from `origin`) as the parser's defaults, then the flags
    in `argv` over them, into the parser's dataclasses, which check themselves. Unknown keys or flags raise
    DtmError."""
    # Only the parser's own keys reach it: others (even `self`, or a number) are reported, never passed as kwargs
    dests = {action.dest for action in parser._actions}
    keys = [str(key) for key in values if key not in dests]
    if keys:
        hints = "".join(f" ({key}: {HINTS[key]})" for key in keys if key in HINTS)
        raise DtmError(f"unknown key(s) {', '.join(map(repr, keys))}{f' in {origin}' if origin else ''}{hints}; the "
                       f"keys are the flags of `{parser.prog} --help`")
    parser.set_defaults_with_config(**values)
    return _flags(parser, list(argv))


def _flags(parser, argv: list[str]) -> tuple:
    parser.allow_abbrev = False  # flags spelled in full, as YAML keys are: `--n_cluster` is no `--n_clusters`
    _, rest = parser.parse_known_args(argv)  # a misspelt flag is named before the values it left unset
    if rest:
        raise DtmError(f"unrecognized argument(s): {' '.join(rest)}; see `{parser.prog} --help`")
    try:
        *parsed, _ = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except (ValueError, TypeError) as err:
        raise DtmError(f"invalid configuration: {first_line(err)}") from err
    # `--config`, listed for --help, is read before parsing: its namespace of leftovers is not a dataclass
    return tuple(p for p in parsed if not isinstance(p, argparse.Namespace))


def parse(parser, argv: Sequence[str] | None) -> tuple:
    """Parse `--config` YAML plus flags into the parser's dataclasses."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not hasattr(parser, "set_defaults_with_config"):  # `dtm-hf run`: its --config is the pipeline recipe
        return _flags(parser, argv)
    if "--config" not in argv:
        return parse_values(parser, {}, argv)
    at = argv.index("--config")
    if at + 1 >= len(argv):
        raise DtmError("--config needs a YAML file")
    path = argv[at + 1]
    values = read_yaml(path, "config file")
    env = values.pop("env", {})  # TRL's convention: environment variables for the run
    if not isinstance(env, dict):
        raise DtmError(f"`env` in {path} must be a mapping of variable names to values")
    os.environ.update({str(k): str(v) for k, v in env.items()})
    return parse_values(parser, values, argv[:at] + argv[at + 2:], origin=path)


def add_config_flag(parser):
    """List `--config` in a step's --help (`parse` reads the file before the flags)."""
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="YAML whose keys are these flags: its values are the defaults, flags override them.")
    return parser


def run_command(make_parser: Callable, main: Callable, argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse, run `main` and turn a DtmError into one error line and exit code 2."""
    from .log import setup

    setup()
    parser = make_parser(prog=prog)
    try:
        return main(*parse(parser, argv))
    except DtmError as err:
        sys.exit(_error(parser.prog, str(err)))
    except KeyboardInterrupt:
        _close_progress_bars()
        print(file=sys.stderr)  # off the line the terminal's ^C was echoed on
        _error(parser.prog, "interrupted; rerun the same command to resume (finished work is kept)")
        sys.exit(130)
    except OSError as err:
        if err.errno not in KNOWN_OS_ERRORS:
            raise  # our bug, or one we have not met: its traceback says where
        at, writing = (f" at {err.filename}", f" writing {err.filename}") if err.filename else ("", "")
        sys.exit(_error(parser.prog, KNOWN_OS_ERRORS[err.errno].format(at=at, writing=writing)))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: dtm-hf <command> [--config FILE.yaml] [flags]", "", "commands:"]
        lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
        print("\n".join(lines))
        sys.exit(0 if argv else 2)
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.exit(_error("dtm-hf", f"unknown command {name!r}; choose one of {', '.join(COMMANDS)}"))
    module = importlib.import_module(COMMANDS[name][0])
    run_command(module.make_parser, module.main, rest, prog=f"dtm-hf {name}")


if __name__ == "__main__":
    main()
