"""The argument parser of every command in the project (standard library only).

argparse accepts any unambiguous prefix of a long option, so `--seed 1` silently means `--seeds 1`;
`StrictArgumentParser` refuses prefixes and names the options the user probably meant instead."""
from __future__ import annotations

import argparse
import difflib
import sys


class StrictArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser with `allow_abbrev=False` whose errors suggest the long options (its subcommands'
    included) closest to each unknown one, e.g. `--seed` -> `--seeds`: also when the error is another
    one, such as a required option missing because it was abbreviated."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)
        self._given: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        super().error(message + self._hint())

    def _hint(self) -> str:
        known = _long_options(self)
        hints = []
        for token in self._given:
            word = token.split("=", 1)[0]
            if not word.startswith("--") or word == "--" or word in known:
                continue
            near = sorted(o for o in known if o.startswith(word)) or difflib.get_close_matches(word, sorted(known), n=3, cutoff=0.75)
            if near:
                hints.append(f"{word}: did you mean {' or '.join(near)}?")
        return f" ({' '.join(hints)} Long options must be spelt in full.)" if hints else ""


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    """The `--` options of `parser` and of its subcommands' parsers."""
    options = {o for o in parser._option_string_actions if o.startswith("--")}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _long_options(sub)
    return options
