"""`kimi-vl-serve` / `python -m server`: argv -> Settings -> `server.app.run(settings)`.

The parser is generated from the Settings fields, so every setting has a flag and the help text
names its environment variable. Only flags given on the command line are passed on (argparse
SUPPRESS defaults), which is what lets the environment and the preset fill in the rest.
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic.fields import FieldInfo

from server.settings import (
    ENV_ONLY_FIELDS,
    InvalidSettings,
    Settings,
    available_presets,
    env_var,
    flag_spellings,
    load_settings,
    unknown_environment_variables,
)

PROG = "kimi-vl-serve"


def _is_bool(field: FieldInfo) -> bool:
    annotation = field.annotation
    if annotation is bool:
        return True
    args = typing.get_args(annotation)
    return isinstance(annotation, types.UnionType) and bool in args


def _is_list(field: FieldInfo) -> bool:
    return typing.get_origin(field.annotation) is list


def _help(name: str, field: FieldInfo) -> str:
    text = field.description or name
    if typing.get_origin(field.annotation) is typing.Literal:
        text += f"; one of: {', '.join(typing.get_args(field.annotation))}"
    default = field.get_default(call_default_factory=True)
    if default not in (None, [], ""):
        text += f" (default: {default})"
    if name == "preset":
        text += f"; presets: {', '.join(available_presets())}"
    # argparse treats % as a format character in help strings.
    return (text + f" [env: {env_var(name)}]").replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    """One flag per Settings field (boolean fields get `--x/--no-x`, list fields take several
    values: `--served-model-name a b`, `--api-key a --api-key b`, `--api-key a,b`)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage="%(prog)s [options]   (see --help for every flag)",
        description="OpenAI-compatible server for Moonshot AI's Kimi-VL models on vLLM. "
        "Precedence: command line > environment > preset file > defaults.",
        argument_default=argparse.SUPPRESS,
    )
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY_FIELDS:
            continue
        flags = flag_spellings(name)
        metavar = name.upper()
        if _is_bool(field):
            parser.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, help=_help(name, field)
            )
        elif _is_list(field):
            parser.add_argument(
                *flags,
                dest=name,
                action="extend",
                nargs="+",
                metavar=metavar.removesuffix("S"),
                help=_help(name, field) + " (several values, the flag repeated, or commas)",
            )
        else:
            parser.add_argument(*flags, dest=name, metavar=metavar, help=_help(name, field))
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse argv into Settings; bad values exit with status 2 and a one-line reason."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = vars(args)
    for name, value in overrides.items():
        if isinstance(value, list):  # `--api-key a --api-key b,c` -> [a, b, c]
            overrides[name] = [item for v in value for item in v.split(",")]
    unknown = unknown_environment_variables()
    if unknown:
        sys.stderr.write(f"{PROG}: warning: ignoring unknown variables: {', '.join(unknown)}\n")
    try:
        return load_settings(overrides)
    except InvalidSettings as exc:
        parser.error(str(exc))  # prints usage + message, exits 2


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(argv)
    # Lazy: the app pulls in FastAPI and vLLM, which `--help` and bad flags do not need.
    from server.app import run

    run(settings)
