"""A small Dockerfile reader: enough of the syntax to run a final stage's command outside Docker.

It understands line continuations, comments, parser directives, ARG (global and per stage), ENV (both
forms, quoted values, `$VAR` / `${VAR}` / `${VAR:-default}` substitution), USER, WORKDIR, COPY,
EXPOSE, ENTRYPOINT, CMD and HEALTHCHECK. Anything it does not model is kept as a raw instruction.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Docker's variable substitution: `$VAR`, `${VAR}`, `${VAR:-default}`; unknown variables are empty."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        value = variables.get(name, "")
        if not value and match.group("default") is not None:
            return match.group("default")
        return value

    return _VARIABLE.sub(replace, text)


@dataclass
class Instruction:
    keyword: str
    arguments: str
    line: int


@dataclass
class Healthcheck:
    options: dict[str, str]
    command: list[str]


@dataclass
class Stage:
    """One build stage, with its instructions evaluated in order."""

    base: str
    name: str | None
    args: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str = "/"
    exposed: list[str] = field(default_factory=list)
    copies: list[tuple[dict[str, str], list[str], str]] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: Healthcheck | None = None
    shell_forms: list[str] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)


def logical_lines(text: str) -> list[Instruction]:
    """Join continuations and drop comments, as Docker does; parser directives count as comments."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += stripped
        keyword, _, arguments = pending.strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip(), start))
        pending = ""
    if pending.strip():
        raise ValueError(f"line {start}: continuation at the end of the file")
    return instructions


def _exec_form(arguments: str, where: str, stage: Stage) -> list[str]:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        stage.shell_forms.append(where)
        return ["/bin/sh", "-c", arguments]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where}: expected a JSON array of strings")
    return value


def _env_pairs(arguments: str, variables: Mapping[str, str]) -> list[tuple[str, str]]:
    words = shlex.split(arguments, posix=True)
    if words and "=" not in words[0]:
        # Legacy form: ENV KEY value with spaces
        key, _, value = arguments.partition(" ")
        return [(key, substitute(value.strip(), variables))]
    pairs: list[tuple[str, str]] = []
    # Docker substitutes all values of one ENV instruction with the variables from before it.
    for word in words:
        key, _, value = word.partition("=")
        pairs.append((key, substitute(value, variables)))
    return pairs


def _flags(words: list[str]) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        name, _, value = words.pop(0)[2:].partition("=")
        flags[name] = value
    return flags, words


def parse(text: str, base_env: Mapping[str, str] | None = None) -> list[Stage]:
    """Evaluate every stage of a Dockerfile. Base images are not pulled: `base_env` stands for the
    environment every stage starts with (a stage built on an earlier stage starts with that one's)."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in logical_lines(text):
        keyword, arguments = instruction.keyword, instruction.arguments
        if keyword == "FROM":
            words = arguments.split()
            _, words = _flags(words)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            base = substitute(words[0], global_args)
            parent = next((stage for stage in stages if stage.name == base), None)
            env = dict(parent.env) if parent else dict(base_env or {})
            stages.append(Stage(base=base, name=name, env=env))
            continue
        if not stages:
            if keyword != "ARG":
                raise ValueError(f"line {instruction.line}: {keyword} before the first FROM")
            key, _, default = arguments.partition("=")
            global_args[key.strip()] = default.strip().strip('"')
            continue
        stage = stages[-1]
        stage.instructions.append(instruction)
        variables = {**stage.args, **stage.env}
        where = f"line {instruction.line} ({keyword})"
        if keyword == "ARG":
            key, has_default, default = arguments.partition("=")
            key = key.strip()
            stage.args[key] = default.strip().strip('"') if has_default else global_args.get(key, "")
        elif keyword == "ENV":
            stage.env.update(_env_pairs(arguments, variables))
        elif keyword == "USER":
            stage.user = substitute(arguments, variables)
        elif keyword == "WORKDIR":
            stage.workdir = substitute(arguments, variables)
        elif keyword == "EXPOSE":
            stage.exposed += substitute(arguments, variables).split()
        elif keyword == "COPY":
            flags, words = _flags(shlex.split(arguments))
            stage.copies.append((flags, words[:-1], words[-1]))
        elif keyword == "ENTRYPOINT":
            stage.entrypoint = _exec_form(arguments, where, stage)
        elif keyword == "CMD":
            stage.cmd = _exec_form(arguments, where, stage)
        elif keyword == "HEALTHCHECK":
            leading = re.match(r"((?:--\S+\s+)*)(.*)", arguments, re.DOTALL)
            assert leading is not None
            options = dict(word[2:].partition("=")[::2] for word in leading.group(1).split())
            rest = leading.group(2).strip()
            if rest.upper() == "NONE":
                stage.healthcheck = None
                continue
            if not rest.upper().startswith("CMD "):
                raise ValueError(f"{where}: expected CMD after the options")
            stage.healthcheck = Healthcheck(options, _exec_form(rest[4:].strip(), where, stage))
    if not stages:
        raise ValueError("no FROM instruction")
    return stages


def final_stage(path: Path, base_env: Mapping[str, str] | None = None) -> Stage:
    return parse(path.read_text(), base_env)[-1]


def seconds(duration: str) -> float:
    """A Docker duration such as `5s`, `1m30s` or `500ms`."""
    total = 0.0
    for amount, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total
