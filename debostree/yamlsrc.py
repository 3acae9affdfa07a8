"""YAML loading that remembers where every value came from.

PyYAML's composer gives nodes with line numbers; this module turns them into
plain Python values plus a ``Source`` that maps a key path (``("stages", 2,
"install")``) to its file and line, so validation errors can point at the
exact spot.  Duplicate keys, which PyYAML silently accepts, are refused.
"""

import os

import yaml

from .errors import UserError

# Bounds on what a recipe may be: aliases can make a few lines expand into
# gigabytes ("billion laughs"), and deep nesting exhausts the parser.
MAX_BYTES = 1 << 20
MAX_VALUES = 100_000
MAX_DEPTH = 64


class Source:
    """Where the values of one YAML document came from."""

    def __init__(self, path, lines=None):
        self.path = path
        self.lines = lines or {}

    def line(self, keypath):
        """The line of ``keypath``, or of its nearest ancestor that has one."""
        keypath = tuple(keypath)
        while keypath not in self.lines and keypath:
            keypath = keypath[:-1]
        return self.lines.get(keypath)

    def error(self, keypath, message, hint=None):
        return UserError(message, path=self.path, line=self.line(keypath),
                         key=format_keypath(keypath), hint=hint)


def format_keypath(keypath):
    text = ""
    for part in keypath:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text


def _convert(node, keypath, lines, constructor, path, budget=None):
    budget = budget if budget is not None else [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        raise UserError(f"more than {MAX_VALUES} values (aliases that expand "
                        "too far?)", path=path, line=node.start_mark.line + 1,
                        key=format_keypath(keypath),
                        hint="write the values out instead of repeating aliases")
    if len(keypath) > MAX_DEPTH:
        raise UserError(f"nested more than {MAX_DEPTH} levels deep", path=path,
                        line=node.start_mark.line + 1)
    lines[keypath] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise UserError("mapping keys must be plain strings", path=path,
                                line=key_node.start_mark.line + 1,
                                key=format_keypath(keypath))
            key = constructor.construct_object(key_node)
            if not isinstance(key, str):
                key = str(key)
            if key in result:
                raise UserError(f"duplicate key '{key}'", path=path,
                                line=key_node.start_mark.line + 1,
                                key=format_keypath(keypath),
                                hint="each key may appear once in a mapping")
            result[key] = _convert(value_node, keypath + (key,), lines,
                                   constructor, path, budget)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_convert(item, keypath + (index,), lines, constructor, path,
                         budget)
                for index, item in enumerate(node.value)]
    return constructor.construct_object(node, deep=True)


def load(path, text=None):
    """Parse the YAML file at ``path``; return ``(data, Source)``."""
    if text is None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as error:
            raise UserError(f"cannot read file: {error.strerror}", path=path)
        except UnicodeDecodeError as error:
            raise UserError(f"not UTF-8 text ({error.reason})", path=path)
    if len(text) > MAX_BYTES:
        raise UserError(f"{len(text)} characters: larger than a recipe can be "
                        f"({MAX_BYTES})", path=path)
    if "\0" in text:
        raise UserError("a NUL character in the file", path=path,
                        line=text.count("\n", 0, text.index("\0")) + 1)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise UserError("nested too deeply to read", path=path,
                        hint=f"recipes nest at most {MAX_DEPTH} levels")
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "syntax error"
        raise UserError(f"invalid YAML: {problem}", path=path,
                        line=mark.line + 1 if mark else None,
                        hint="check indentation, quoting and colons on this line")
    except yaml.YAMLError as error:
        raise UserError(f"invalid YAML: {error}", path=path)
    lines = {}
    if node is None:
        return None, Source(path, lines)
    constructor = yaml.SafeLoader("")
    try:
        data = _convert(node, (), lines, constructor, path)
    except yaml.constructor.ConstructorError as error:
        mark = error.problem_mark
        raise UserError(f"invalid YAML value: {error.problem}", path=path,
                        line=mark.line + 1 if mark else None)
    return data, Source(path, lines)


def existing_path(src, data, key, config_path):
    """The path a configuration file's ``key`` names (``~`` expanded,
    relative to the file), which must exist."""
    value = data[key]
    if not isinstance(value, str) or not value:
        raise src.error((key,), f"expected a path, got {value!r}")
    value = os.path.join(os.path.dirname(os.path.abspath(config_path)),
                         os.path.expanduser(value))
    if not os.path.exists(value):
        raise src.error((key,), f"no such file or directory: {value}")
    return value
