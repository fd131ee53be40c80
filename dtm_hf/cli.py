"""The `dtm-hf` command: one subcommand per Disperse-Then-Merge step.

    dtm-hf distribute --dataset data.jsonl --n_clusters 4 --method kmeans --output_dir data
    dtm-hf train --config recipes/tiny/dtm_lora.yaml --cluster all_clusters
    dtm-hf merge --submodels out/cluster_0 out/cluster_1 --output_dir merged
    dtm-hf run                                  # the offline demo: the whole pipeline on CPU

Every subcommand takes `--config FILE.yaml` whose keys are its flags: YAML gives the defaults, flags override
them, and an unknown key is an error. Each subcommand is also `python -m dtm_hf.<module>`.
"""

import importlib
import sys
from collections.abc import Callable, Sequence

from .errors import DtmError

# Subcommand -> module; each module has `make_parser(prog)` and `main(*dataclasses)`. Imported on demand so
# that `dtm-hf --help` and each subcommand's `--help` stay instant.
COMMANDS = {
    "distribute": ("dtm_hf.distribute", "split instruction data into K cluster configs of a Hub dataset"),
    "train": ("dtm_hf.train", "train one LoRA / QLoRA sub-model per cluster with TRL's SFTTrainer"),
    "merge": ("dtm_hf.merge", "merge the sub-models with mergekit (linear, TIES, ...)"),
    "run": ("dtm_hf.run", "the whole pipeline from one recipe (an offline CPU demo by default)"),
    "evaluate": ("dtm_hf.evaluate", "held-out loss per cluster (and lm-eval tasks) for several models"),
}


def _error(prog: str, message: str) -> int:
    print(f"{prog}: error: {message}", file=sys.stderr)
    return 2


def parse(parser, argv: Sequence[str] | None) -> tuple:
    """Parse `--config` YAML plus flags into the parser's dataclasses; unknown keys or flags raise DtmError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not hasattr(parser, "parse_args_and_config"):  # a command whose own `--config` is not a defaults file
        *parsed, from_flags = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
        if from_flags:
            raise DtmError(f"unrecognized argument(s): {' '.join(from_flags)}; see `{parser.prog} --help`")
        return tuple(parsed)
    config_path = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    try:
        *parsed, from_config, from_flags = parser.parse_args_and_config(
            argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except FileNotFoundError as err:
        raise DtmError(f"cannot read the config file {config_path}: {err.strerror}") from err
    except (ValueError, TypeError) as err:
        raise DtmError(f"invalid configuration: {err}") from err
    if from_config:
        keys = [s[2:] for s in from_config[::2]]
        raise DtmError(
            f"unknown key(s) {', '.join(map(repr, keys))} in {config_path}; the keys of a config are the flags of "
            f"`{parser.prog} --help`"
        )
    if from_flags:
        raise DtmError(f"unrecognized argument(s): {' '.join(from_flags)}; see `{parser.prog} --help`")
    return tuple(parsed)


def run_command(make_parser: Callable, main: Callable, argv: Sequence[str] | None = None, prog: str | None = None):
    """Parse, run `main` and turn a DtmError into one error line and exit code 2."""
    parser = make_parser(prog=prog)
    try:
        return main(*parse(parser, argv))
    except DtmError as err:
        sys.exit(_error(parser.prog, str(err)))


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
