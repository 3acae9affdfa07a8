"""Ninja syntax: escaping and rendering of the build graph.

This module knows nothing of recipes.  It escapes every path and value that
goes into ninja syntax (``$``, spaces, colons; newlines are refused), quotes
command arguments for the shell, and renders a ``Graph`` through the jinja2
template ``build.ninja.in``, writing ``build.ninja`` atomically.
"""

import shlex
from dataclasses import dataclass, field

from .errors import UserError


def _no_newline(text):
    if "\n" in text or "\r" in text:
        raise UserError(f"a newline cannot be written into build.ninja: {text!r}",
                        hint="rename the file or value")
    return text


def escape_path(path):
    """Escape a path for a build line (outputs, inputs)."""
    return _no_newline(str(path)).replace("$", "$$").replace(" ", "$ ") \
        .replace(":", "$:")


def escape_value(value):
    """Escape a variable value (the right side of ``name = value``)."""
    text = _no_newline(str(value)).replace("$", "$$")
    if text[:1] in (" ", "\t"):
        text = "$" + text  # ninja strips leading whitespace of values
    return text


def shell_arg(value):
    """One shell-quoted command argument, escaped for a ninja value."""
    return escape_value(shlex.quote(str(value)))


def shell_args(values):
    return " ".join(shell_arg(v) for v in values)


@dataclass
class Rule:
    name: str
    command: str               # ninja syntax, already escaped
    description: str = None
    variables: dict = field(default_factory=dict)  # restat, pool, depfile, ...


@dataclass
class Build:
    outputs: list              # raw paths
    rule: str
    inputs: list = field(default_factory=list)
    implicit: list = field(default_factory=list)
    order_only: list = field(default_factory=list)
    implicit_outputs: list = field(default_factory=list)
    variables: dict = field(default_factory=dict)  # raw values, escaped here

    def line(self):
        out = " ".join(escape_path(p) for p in self.outputs)
        if self.implicit_outputs:
            out += " | " + " ".join(escape_path(p) for p in self.implicit_outputs)
        text = f"build {out}: {self.rule}"
        if self.inputs:
            text += " " + " ".join(escape_path(p) for p in self.inputs)
        if self.implicit:
            text += " | " + " ".join(escape_path(p) for p in self.implicit)
        if self.order_only:
            text += " || " + " ".join(escape_path(p) for p in self.order_only)
        return text

    def escaped_variables(self):
        return {k: v if isinstance(v, Raw) else escape_value(v)
                for k, v in self.variables.items()}


class Raw(str):
    """A value that is already ninja syntax (for example from shell_args)."""


@dataclass
class Graph:
    variables: dict = field(default_factory=dict)  # raw values
    rules: list = field(default_factory=list)
    pools: dict = field(default_factory=dict)      # name -> depth
    builds: list = field(default_factory=list)
    defaults: list = field(default_factory=list)   # raw paths

    def escaped_variables(self):
        return {k: v if isinstance(v, Raw) else escape_value(v)
                for k, v in self.variables.items()}


def render(graph, template_path):
    import jinja2
    with open(template_path, encoding="utf-8") as f:
        template = jinja2.Template(f.read(), undefined=jinja2.StrictUndefined,
                                   keep_trailing_newline=True,
                                   trim_blocks=True, lstrip_blocks=True)
    return template.render(graph=graph, escape_path=escape_path)
