"""Command lines made from flows: each parameter of a flow is a flag (`--batch-size` for
`batch_size`) with the type, choices, default and meaning the flow declares, read from the same
parameter schema the Prefect UI shows (the signature's types and the docstring's Args section,
which `flows.params.described` writes). A parameter is declared once, in the flow.

    python -m flows.train_and_sample --help
    python -m flows.evaluate --preset tiny --run-name r1 --sampler dpm_solver_pp

Only the flags given reach the flow, so every other parameter keeps the flow's default, and the
flow validates each value against its type before any work (exit 2 with the parameter's name).
"""

from __future__ import annotations

import argparse
import inspect
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from diffusion_lib import failures
from flows.console import progress_bars

_TYPES: dict[str, Callable[[str], Any]] = {"integer": int, "number": float, "string": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_schema(prop: dict) -> dict:
    """The schema of a value given on the command line: X of `X | None` (anyOf [X, null])."""
    options = prop.get("anyOf")
    if not options:
        return prop
    values = [option for option in options if option.get("type") != "null"]
    if len(values) != 1:
        raise TypeError(f"{prop.get('title')}: a flag takes one type, got {options}")
    return values[0]


def _constraint(value: dict) -> str:
    bounds = (
        ("exclusiveMinimum", "> {}"),
        ("minimum", ">= {}"),
        ("exclusiveMaximum", "< {}"),
        ("maximum", "<= {}"),
    )
    return ", ".join(form.format(value[key]) for key, form in bounds if key in value)


def _help(prop: dict, value: dict, default: Any, required: bool) -> str:
    parts = [prop.get("description", "")]
    kind = value.get("type", "")
    limits = _constraint(value)
    if required:
        given = "required"
    elif default is None:  # the flow's meaning says what leaving it out does
        given = "optional"
    else:
        given = f"default: {default}"
    parts.append(f"[{kind}{' ' + limits if limits else ''}; {given}]")
    return " ".join(part for part in parts if part).replace("%", "%%")


def parser_for(
    flow_obj, *, defaults: dict[str, Any] | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    """The command line of `flow_obj`; `defaults` replaces some of the flow's own defaults on
    the command line only (shown as the defaults in --help)."""
    schema = parameter_schema(flow_obj.fn).model_dump()
    defaults = defaults or {}
    parser = argparse.ArgumentParser(
        prog=prog,
        description=flow_obj.fn.__doc__.split("\n\nArgs:")[0] if flow_obj.fn.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, prop in sorted(schema["properties"].items(), key=lambda item: item[1]["position"]):
        value = _value_schema(prop)
        default = defaults.get(name, prop.get("default"))
        required = name in schema.get("required", ()) and name not in defaults
        options: dict[str, Any] = {"dest": name, "help": _help(prop, value, default, required)}
        if value.get("type") == "boolean":
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["type"] = _TYPES[value["type"]]
            options["metavar"] = name.upper()
            if "enum" in value:
                options["choices"] = value["enum"]
                options["metavar"] = "{" + ",".join(value["enum"]) + "}"
        options["required"] = required
        parser.add_argument(_flag(name), default=argparse.SUPPRESS, **options)
    return parser


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def run_cli(
    flow_obj,
    argv: Sequence[str] | None = None,
    *,
    defaults: dict[str, Any] | None = None,
    prog: str | None = None,
):
    """Parses `argv` with `parser_for(flow_obj)` and runs the flow with the flags given (and
    `defaults`). Exits 2 on a bad parameter (nothing has run), 1 when the flow fails."""
    arguments = {
        **(defaults or {}),
        **vars(parser_for(flow_obj, defaults=defaults, prog=prog).parse_args(argv)),
    }
    # SIGTERM unwinds like an exception (Prefect marks the run Crashed first), so exit handlers
    # run: without this, the temporary Prefect server outlived a terminated job.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        root = inspect.signature(flow_obj.fn).parameters.get("output_root")
        if root is not None:  # checked here too, so that the rejection is one line
            failures.check_output_root(arguments.get("output_root", root.default))
        with progress_bars():  # on a terminal only
            return flow_obj(**arguments)
    except (ParameterTypeError, ValueError) as err:  # rejected before any work
        print(f"{flow_obj.name}: bad parameter: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as err:
        print(f"{flow_obj.name} failed: {failures.describe(err)}", file=sys.stderr)
        run_name = arguments.get("run_name") or getattr(err, "run_name", None)
        if run_name:
            resume = command_line(prog or flow_obj.name, {**arguments, "run_name": run_name})
            print(f"it resumes where it stopped: {resume}", file=sys.stderr)
        raise SystemExit(1) from None


def not_defaults(
    flow_obj, parameters: dict[str, Any], always=("preset", "output_root", "run_name")
) -> dict[str, Any]:
    """The `parameters` of a run of `flow_obj` that say something: those given and not None
    that differ from the flow's defaults, and `always` those that name the run."""
    defaults = {name: p.default for name, p in inspect.signature(flow_obj.fn).parameters.items()}
    return {
        name: value
        for name, value in parameters.items()
        if value is not None and (name in always or value != defaults.get(name))
    }


def command_line(prog: str, parameters: dict[str, Any]) -> str:
    """The command line that runs `prog` with `parameters` (a flag each; None left out)."""
    words = prog.split()
    for name, value in parameters.items():
        if isinstance(value, bool):
            words.append(_flag(name) if value else "--no-" + _flag(name)[2:])
        elif value is not None:
            words += [_flag(name), str(value)]
    return shlex.join(words)
