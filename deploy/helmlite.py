"""A small renderer for Helm charts: Go text/template with the Sprig and Helm
functions this repository's chart uses, so that deploy/check.py can render
the chart and inspect the manifests where no helm binary exists.

It follows Go and Helm where they matter for catching mistakes: values
numbers are float64 (so `gt .Values.n 1` is an error, as in Go, and large
numbers print as 1e+06), a field of a missing value is an error ("nil
pointer evaluating interface {}"), `fail` and `required` stop the render,
`toYaml` sorts keys and indents as Helm's does, `lookup` finds nothing (as
in `helm template`), and unknown functions are errors. It is not Helm:
the pull-request workflow also runs `helm lint` and `helm template`.
"""

from __future__ import annotations

import base64
import copy
import decimal
import hashlib
import json
import math
import random
import re
import string
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RenderError(Exception):
    pass


class Fail(RenderError):
    """The template called `fail` (or `required` without a value)."""


# --------------------------------------------------------------------------
# Lexing: text and actions, with Go's trim markers.

ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)


def split(source: str, name: str) -> list[tuple[str, Any]]:
    """[("text", str) | ("action", (body, line))], trim markers applied."""
    items: list[tuple[str, Any]] = []
    pos = 0
    trim_next = False
    for m in ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        items.append(("text", text))
        body = m.group(2).strip()
        line = source.count("\n", 0, m.start()) + 1
        if body.startswith("/*"):
            if not body.endswith("*/"):
                raise RenderError(f"{name}:{line}: unclosed comment")
        else:
            items.append(("action", (body, line)))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = source[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    items.append(("text", text))
    return items


TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<var>\$[A-Za-z_0-9]*(?:\.[A-Za-z_]\w*)*)
  | (?P<field>(?:\.[A-Za-z_]\w*)+|\.)
  | (?P<ident>[A-Za-z_]\w*)
  | (?P<punct>[()|,])
""", re.VERBOSE)


def tokenize(body: str, where: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(body):
        m = TOKEN.match(body, pos)
        if not m:
            raise RenderError(f"{where}: cannot parse {body[pos:]!r}")
        kind = m.lastgroup
        if kind == "field" and pos > 0 and body[pos - 1] == ")":
            kind = "subfield"  # (pipeline).Field
        if kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


# --------------------------------------------------------------------------
# Parsing pipelines and the block structure.


@dataclass
class Pipeline:
    decl: list[str]          # variables declared (:=) or assigned (=)
    assign: bool
    commands: list[list[Any]]  # each: operands; an operand is a token or a nested Pipeline
    where: str


def parse_pipeline(tokens: list[tuple[str, str]], where: str) -> Pipeline:
    decl, assign = [], False
    # `$x :=`, `$x =`, `$i, $v :=`
    for i in range(len(tokens)):
        if tokens[i][0] in ("decl", "assign"):
            names = [t for t in tokens[:i] if t[0] != "punct" or t[1] != ","]
            if names and all(t[0] == "var" for t in names):
                decl = [t[1] for t in names]
                assign = tokens[i][0] == "assign"
                tokens = tokens[i + 1:]
            break
        if tokens[i][0] not in ("var", "punct") or (tokens[i][0] == "punct" and tokens[i][1] != ","):
            break
    pipeline, rest = parse_commands(tokens, where)
    if rest:
        raise RenderError(f"{where}: unexpected {rest[0][1]!r}")
    pipeline.decl, pipeline.assign = decl, assign
    return pipeline


def parse_commands(tokens, where):
    commands, current = [], []
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        if kind == "punct" and text == "(":
            depth, j = 1, i + 1
            while j < len(tokens) and depth:
                if tokens[j] == ("punct", "("):
                    depth += 1
                elif tokens[j] == ("punct", ")"):
                    depth -= 1
                j += 1
            if depth:
                raise RenderError(f"{where}: unbalanced parentheses")
            inner, rest = parse_commands(tokens[i + 1:j - 1], where)
            if rest:
                raise RenderError(f"{where}: unexpected {rest[0][1]!r}")
            current.append(inner)
            i = j
            # A field chain right after `)`.
            if i < len(tokens) and tokens[i][0] == "subfield":
                current.append(("chain-of-previous", tokens[i][1]))
                i += 1
            continue
        if kind == "punct" and text == "|":
            if not current:
                raise RenderError(f"{where}: empty command before |")
            commands.append(current)
            current = []
        elif kind == "punct" and text == ")":
            raise RenderError(f"{where}: unbalanced parentheses")
        else:
            current.append((kind, text))
        i += 1
    if not current:
        raise RenderError(f"{where}: empty command")
    commands.append(current)
    return Pipeline([], False, commands, where), []


@dataclass
class Node:
    kind: str                       # text, action, if, with, range, define
    text: str = ""
    pipe: Pipeline | None = None
    body: list = field(default_factory=list)
    branches: list = field(default_factory=list)  # for if: [(pipe, body)]; with: same
    orelse: list = field(default_factory=list)
    name: str = ""


def parse(source: str, name: str, defines: dict[str, list]) -> list:
    items = split(source, name)
    root: list = []
    stack: list[tuple[Node | None, list]] = [(None, root)]

    def out() -> list:
        return stack[-1][1]

    for kind, value in items:
        if kind == "text":
            if value:
                out().append(Node("text", text=value))
            continue
        body, line = value
        where = f"{name}:{line}"
        word = body.split(None, 1)[0]
        rest = body[len(word):].strip()
        if word in ("if", "with", "range"):
            node = Node(word)
            node.branches.append((parse_pipeline(tokenize(rest, where), where), []))
            out().append(node)
            stack.append((node, node.branches[-1][1]))
        elif word == "else":
            node = stack[-1][0]
            if node is None or node.kind not in ("if", "with", "range"):
                raise RenderError(f"{where}: else outside if/with/range")
            sub = rest.split(None, 1)
            if sub and sub[0] in ("if", "with") and node.kind == sub[0]:
                node.branches.append((parse_pipeline(tokenize(sub[1], where), where), []))
                stack[-1] = (node, node.branches[-1][1])
            elif not rest:
                stack[-1] = (node, node.orelse)
            else:
                raise RenderError(f"{where}: cannot parse else {rest!r}")
        elif word == "end":
            if len(stack) == 1:
                raise RenderError(f"{where}: end without a block")
            node, _ = stack.pop()
            if node.kind == "define":
                defines[node.name] = node.body
        elif word in ("define", "block"):
            m = re.fullmatch(r'"([^"]+)"', rest)
            if not m:
                raise RenderError(f"{where}: define needs a quoted name")
            node = Node("define", name=m.group(1))
            if len(stack) != 1:
                raise RenderError(f"{where}: define inside a block")
            stack.append((node, node.body))
        elif word == "template":
            m = re.fullmatch(r'"([^"]+)"\s*(.*)', rest)
            if not m:
                raise RenderError(f"{where}: cannot parse template call")
            arg = parse_pipeline(tokenize(m.group(2) or ".", where), where)
            out().append(Node("template", name=m.group(1), pipe=arg))
        else:
            out().append(Node("action", pipe=parse_pipeline(tokenize(body, where), where)))
    if len(stack) != 1:
        raise RenderError(f"{name}: {stack[-1][0].kind} is never closed with end")
    return root


# --------------------------------------------------------------------------
# Values, truth and printing as Go does them.


def go_float(value: float) -> str:
    """fmt's %v of a float64: strconv's shortest 'g', which switches to an
    exponent when the decimal exponent is below -4 or at least 6."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == 0:
        return "0"
    sign, digits, exp = decimal.Decimal(repr(value)).normalize().as_tuple()
    text = "".join(map(str, digits))
    point = len(text) + exp  # digits before the decimal point
    x = point - 1
    minus = "-" if sign else ""
    if x < -4 or x >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{minus}{mantissa}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if point <= 0:
        return f"{minus}0.{'0' * -point}{text}"
    if point >= len(text):
        return f"{minus}{text}{'0' * (point - len(text))}"
    return f"{minus}{text[:point]}.{text[point:]}"


def to_str(value: Any) -> str:
    """fmt.Sprint, as text/template prints a value."""
    if value is None:
        return ""  # Helm replaces "<no value>" with ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, (dict, list)):
        raise RenderError(f"printing a {type(value).__name__} directly is almost surely a mistake: {value!r}")
    return str(value)


def truth(value: Any) -> bool:
    if value is None or value is False:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value != 0
    if isinstance(value, (str, list, dict, tuple)):
        return len(value) > 0
    return True


def floats(values: Any) -> Any:
    """Helm reads values through JSON: every number is a float64."""
    if isinstance(values, bool):
        return values
    if isinstance(values, int):
        return float(values)
    if isinstance(values, dict):
        return {k: floats(v) for k, v in values.items()}
    if isinstance(values, list):
        return [floats(v) for v in values]
    return values


def to_yaml(value: Any) -> str:
    """Helm's toYaml: sigs.k8s.io/yaml, keys sorted, no trailing newline."""
    def plain(v):
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        return v
    if value is None:
        return "null"
    text = yaml.safe_dump(plain(value), default_flow_style=False, sort_keys=True, width=10**9)
    if text.endswith("\n...\n"):
        text = text[:-5]
    return text.rstrip("\n")


def go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    return "other"


def compare(a: Any, b: Any, op: str, where: str) -> bool:
    if op in ("eq", "ne"):
        if a is not None and b is not None and go_kind(a) != go_kind(b) and "other" not in (go_kind(a), go_kind(b)):
            raise RenderError(f"{where}: error calling {op}: incompatible types for comparison ({go_kind(a)}, {go_kind(b)})")
        return (a == b) if op == "eq" else (a != b)
    if go_kind(a) != go_kind(b) or go_kind(a) in ("bool", "other"):
        raise RenderError(f"{where}: error calling {op}: incompatible types for comparison ({go_kind(a)}, {go_kind(b)})")
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def to_int(value: Any) -> int:
    if value is None or value == "":
        return 0
    if isinstance(value, str):
        try:
            return int(float(value))
        except ValueError:
            return 0
    return int(value)


def go_printf(fmt: str, args: list, where: str) -> str:
    out, i, n = [], 0, 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1]
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if n >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        arg = args[n]
        n += 1
        go_type = {"float": "float64", "int": "int"}.get(go_kind(arg), go_kind(arg))
        if verb == "s":
            out.append(arg if isinstance(arg, str) else f"%!s({go_type}={to_str(arg)})")
        elif verb == "d":
            out.append(str(arg) if go_kind(arg) == "int" else f"%!d({go_type}={to_str(arg)})")
        elif verb == "v":
            out.append(to_str(arg))
        elif verb == "q":
            out.append(json.dumps(to_str(arg)))
        else:
            raise RenderError(f"{where}: printf verb %{verb} not supported here")
    if n < len(args):
        out.append("%!(EXTRA)")
    return "".join(out)


# --------------------------------------------------------------------------
# Execution.


class Chart:
    def __init__(self, path: Path):
        self.path = path
        self.meta = yaml.safe_load((path / "Chart.yaml").read_text())
        self.default_values = yaml.safe_load((path / "values.yaml").read_text()) or {}
        self.defines: dict[str, list] = {}
        self.files: dict[str, list] = {}
        for file in sorted((path / "templates").rglob("*")):
            if not file.is_file():
                continue
            name = f"{path.name}/{file.relative_to(path).as_posix()}"
            self.files[name] = parse(file.read_text(encoding="utf-8"), name, self.defines)
        # Helm names each file's template by its path, for include (print $.Template.BasePath ...).
        for name, nodes in self.files.items():
            self.defines.setdefault(name, nodes)

    def render(self, overrides: dict | None = None, release: str = "chat",
               namespace: str = "default", is_upgrade: bool = False) -> dict[str, str]:
        """{template name: rendered text} for every file not starting with `_`."""
        values = merge_values(copy.deepcopy(self.default_values), overrides or {})
        top = {
            "Values": floats(values),
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm",
                        "IsInstall": not is_upgrade, "IsUpgrade": is_upgrade, "Revision": 1},
            "Chart": {"Name": self.meta["name"], "Version": self.meta["version"],
                      "AppVersion": self.meta.get("appVersion", "")},
            "Capabilities": {"KubeVersion": {"Version": "v1.31.0", "Major": "1", "Minor": "31"}},
            "Template": {"BasePath": f"{self.path.name}/templates", "Name": ""},
        }
        out = {}
        for name, nodes in self.files.items():
            if Path(name).name.startswith("_"):
                continue
            ctx = dict(top)
            ctx["Template"] = {"BasePath": f"{self.path.name}/templates", "Name": name}
            out[name] = Exec(self, top).run(nodes, ctx)
        return out


def merge_values(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_values(base[key], value)
        else:
            base[key] = value
    return base


def set_path(values: dict, dotted: str, value: Any) -> dict:
    """--set a.b.c=value (value already typed)."""
    node = values
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return values


class Exec:
    def __init__(self, chart: Chart, top: dict):
        self.chart = chart
        self.top = top
        self.depth = 0

    def run(self, nodes: list, dot: Any) -> str:
        scope = [{"$": dot}]
        return self.exec_nodes(nodes, dot, scope)

    def exec_nodes(self, nodes, dot, scopes) -> str:
        out = []
        for node in nodes:
            out.append(self.exec_node(node, dot, scopes))
        return "".join(out)

    def exec_node(self, node: Node, dot, scopes) -> str:
        if node.kind == "text":
            return node.text
        if node.kind == "action":
            value = self.pipeline(node.pipe, dot, scopes)
            return "" if node.pipe.decl else to_str(value)
        if node.kind == "template":
            arg = self.pipeline(node.pipe, dot, scopes)
            return self.include(node.name, arg, node.pipe.where)
        if node.kind == "if":
            for pipe, body in node.branches:
                if truth(self.pipeline(pipe, dot, scopes)):
                    return self.exec_nodes(body, dot, scopes + [{}])
            return self.exec_nodes(node.orelse, dot, scopes + [{}])
        if node.kind == "with":
            for pipe, body in node.branches:
                value = self.pipeline(pipe, dot, scopes)
                if truth(value):
                    return self.exec_nodes(body, value, scopes + [{}])
            return self.exec_nodes(node.orelse, dot, scopes + [{}])
        if node.kind == "range":
            pipe, body = node.branches[0]
            value = self.eval_commands(pipe, dot, scopes)
            items: list[tuple[Any, Any]]
            if isinstance(value, dict):
                items = sorted(value.items())
            elif isinstance(value, list):
                items = list(enumerate(value))
            elif value is None:
                items = []
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                items = [(i, i) for i in range(int(value))]
            else:
                raise RenderError(f"{pipe.where}: range can't iterate over {value!r}")
            if not items:
                return self.exec_nodes(node.orelse, dot, scopes + [{}])
            out = []
            for key, item in items:
                scope: dict = {}
                if len(pipe.decl) == 1:
                    scope[pipe.decl[0]] = item
                elif len(pipe.decl) == 2:
                    scope[pipe.decl[0]], scope[pipe.decl[1]] = key, item
                out.append(self.exec_nodes(body, item, scopes + [scope]))
            return "".join(out)
        raise RenderError(f"unknown node {node.kind}")

    def include(self, name: str, arg: Any, where: str) -> str:
        if name not in self.chart.defines:
            raise RenderError(f"{where}: no template {name!r}")
        self.depth += 1
        if self.depth > 100:
            raise RenderError(f"{where}: include recursion")
        try:
            return self.run(self.chart.defines[name], arg)
        finally:
            self.depth -= 1

    def pipeline(self, pipe: Pipeline, dot, scopes) -> Any:
        value = self.eval_commands(pipe, dot, scopes)
        if pipe.decl:
            if pipe.assign:
                for scope in reversed(scopes):
                    if pipe.decl[0] in scope:
                        scope[pipe.decl[0]] = value
                        break
                else:
                    raise RenderError(f"{pipe.where}: undefined variable {pipe.decl[0]}")
            else:
                scopes[-1][pipe.decl[-1]] = value
        return value

    def eval_commands(self, pipe: Pipeline, dot, scopes) -> Any:
        value, piped = None, False
        for command in pipe.commands:
            value = self.command(command, dot, scopes, pipe.where, value if piped else _NOTHING)
            piped = True
        return value

    def lookup_var(self, name: str, scopes, where: str) -> Any:
        for scope in reversed(scopes):
            if name in scope:
                return scope[name]
        raise RenderError(f"{where}: undefined variable {name}")

    def chain(self, base: Any, fields: list[str], where: str, label: str) -> Any:
        for i, name in enumerate(fields):
            if base is None:
                raise RenderError(f"{where}: nil pointer evaluating interface {{}}.{name} ({label})")
            if not isinstance(base, dict):
                raise RenderError(f"{where}: can't evaluate field {name} in {type(base).__name__} ({label})")
            base = base.get(name)
        return base

    def operand(self, op, dot, scopes, where: str) -> Any:
        if isinstance(op, Pipeline):
            return self.eval_commands(op, dot, scopes)
        kind, text = op
        if kind == "str":
            return json.loads(text)
        if kind == "raw":
            return text[1:-1]
        if kind == "num":
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "field":
            if text == ".":
                return dot
            return self.chain(dot, text[1:].split("."), where, text)
        if kind == "var":
            name, *fields = text.split(".")
            return self.chain(self.lookup_var(name, scopes, where), fields, where, text)
        if kind == "ident":
            if text in ("true", "false"):
                return text == "true"
            if text == "nil":
                return None
            return self.call(text, [], where, dot, scopes)
        raise RenderError(f"{where}: unexpected {text!r}")

    def command(self, command: list, dot, scopes, where: str, piped) -> Any:
        first = command[0]
        if isinstance(first, tuple) and first[0] == "ident" and first[1] not in ("true", "false", "nil"):
            name = first[1]
            if name in ("and", "or"):
                return self.short_circuit(name, command[1:], dot, scopes, where, piped)
            args = []
            i = 1
            while i < len(command):
                op = command[i]
                if i + 1 < len(command) and isinstance(command[i + 1], tuple) and command[i + 1][0] == "chain-of-previous":
                    value = self.operand(op, dot, scopes, where)
                    args.append(self.chain(value, command[i + 1][1][1:].split("."), where, command[i + 1][1]))
                    i += 2
                    continue
                args.append(self.operand(op, dot, scopes, where))
                i += 1
            if piped is not _NOTHING:
                args.append(piped)
            return self.call(name, args, where, dot, scopes)
        if len(command) == 2 and isinstance(command[1], tuple) and command[1][0] == "chain-of-previous":
            value = self.operand(first, dot, scopes, where)
            return self.chain(value, command[1][1][1:].split("."), where, command[1][1])
        if len(command) != 1 or piped is not _NOTHING:
            raise RenderError(f"{where}: can't give arguments to a non-function")
        return self.operand(first, dot, scopes, where)

    def short_circuit(self, name, ops, dot, scopes, where, piped):
        values = [lambda op=op: self.operand(op, dot, scopes, where) for op in ops]
        if piped is not _NOTHING:
            values.append(lambda: piped)
        value = None
        for get in values:
            value = get()
            if (name == "and" and not truth(value)) or (name == "or" and truth(value)):
                return value
        return value

    def call(self, name: str, args: list, where: str, dot, scopes) -> Any:
        def need(n):
            if len(args) != n:
                raise RenderError(f"{where}: wrong number of args for {name}: want {n} got {len(args)}")

        if name == "include":
            need(2)
            return self.include(args[0], args[1], where)
        if name == "fail":
            need(1)
            raise Fail(f"{where}: {args[0]}")
        if name == "required":
            need(2)
            if args[1] is None or args[1] == "":
                raise Fail(f"{where}: {args[0]}")
            return args[1]
        if name in ("eq", "ne", "lt", "le", "gt", "ge"):
            need(2)
            return compare(args[0], args[1], name, where)
        if name == "not":
            need(1)
            return not truth(args[0])
        if name == "default":
            need(2)
            return args[1] if truth(args[1]) else args[0]
        if name == "empty":
            need(1)
            return not truth(args[0])
        if name == "ternary":
            need(3)
            return args[0] if truth(args[2]) else args[1]
        if name == "quote":
            return " ".join(json.dumps(to_str(a)) for a in args if a is not None)
        if name == "squote":
            return " ".join(f"'{to_str(a)}'" for a in args if a is not None)
        if name == "print":
            return "".join(to_str(a) for a in args)
        if name == "printf":
            return go_printf(args[0], args[1:], where)
        if name == "toString":
            need(1)
            return to_str(args[0])
        if name == "int" or name == "int64":
            need(1)
            return to_int(args[0])
        if name == "add":
            return sum(to_int(a) for a in args)
        if name == "sub":
            need(2)
            return to_int(args[0]) - to_int(args[1])
        if name == "mul":
            result = 1
            for a in args:
                result *= to_int(a)
            return result
        if name == "div":
            need(2)
            return int(to_int(args[0]) / to_int(args[1]))
        if name == "trunc":
            need(2)
            n = to_int(args[0])
            return args[1][:n] if n >= 0 else args[1][n:]
        if name == "trimSuffix":
            need(2)
            return args[1][: -len(args[0])] if args[0] and args[1].endswith(args[0]) else args[1]
        if name == "trimPrefix":
            need(2)
            return args[1][len(args[0]):] if args[1].startswith(args[0]) else args[1]
        if name == "trim":
            need(1)
            return to_str(args[0]).strip()
        if name == "replace":
            need(3)
            return to_str(args[2]).replace(args[0], args[1])
        if name == "contains":
            need(2)
            return args[0] in to_str(args[1])
        if name == "hasPrefix":
            need(2)
            return to_str(args[1]).startswith(args[0])
        if name == "lower":
            need(1)
            return to_str(args[0]).lower()
        if name == "upper":
            need(1)
            return to_str(args[0]).upper()
        if name == "indent":
            need(2)
            pad = " " * to_int(args[0])
            return pad + to_str(args[1]).replace("\n", "\n" + pad)
        if name == "nindent":
            need(2)
            pad = " " * to_int(args[0])
            return "\n" + pad + to_str(args[1]).replace("\n", "\n" + pad)
        if name == "toYaml":
            need(1)
            return to_yaml(args[0])
        if name == "fromYaml":
            need(1)
            try:
                return floats(yaml.safe_load(args[0]) or {})
            except yaml.YAMLError as e:
                return {"Error": str(e)}
        if name == "toJson":
            need(1)
            return json.dumps(args[0], separators=(",", ":"), sort_keys=True)
        if name == "sha256sum":
            need(1)
            return hashlib.sha256(to_str(args[0]).encode()).hexdigest()
        if name == "b64enc":
            need(1)
            return base64.b64encode(to_str(args[0]).encode()).decode()
        if name == "b64dec":
            need(1)
            return base64.b64decode(to_str(args[0])).decode()
        if name == "urlquery":
            return urllib.parse.quote_plus("".join(to_str(a) for a in args), safe="~")
        if name == "randAlphaNum":
            need(1)
            return "".join(random.choice(string.ascii_letters + string.digits) for _ in range(to_int(args[0])))
        if name == "lookup":
            need(4)
            return {}
        if name == "list":
            return list(args)
        if name == "dict":
            if len(args) % 2:
                args = args + [""]
            return {to_str(args[i]): args[i + 1] for i in range(0, len(args), 2)}
        if name == "set":
            need(3)
            args[0][args[1]] = args[2]
            return args[0]
        if name == "hasKey":
            need(2)
            return isinstance(args[0], dict) and args[1] in args[0]
        if name == "index":
            value = args[0]
            for key in args[1:]:
                if isinstance(value, dict):
                    value = value.get(key)
                elif isinstance(value, list):
                    value = value[to_int(key)]
                else:
                    raise RenderError(f"{where}: index of {type(value).__name__}")
            return value
        if name == "merge":
            dst = args[0]
            for src in args[1:]:
                for key, value in (src or {}).items():
                    if key not in dst:
                        dst[key] = copy.deepcopy(value)
                    elif isinstance(dst[key], dict) and isinstance(value, dict):
                        self.call("merge", [dst[key], value], where, dot, scopes)
            return dst
        if name == "deepCopy":
            need(1)
            return copy.deepcopy(args[0])
        if name == "len":
            need(1)
            return len(args[0])
        raise RenderError(f'{where}: function "{name}" not defined (helmlite knows it not)')


_NOTHING = object()


def render_string(source: str, values: dict | None = None, defines: str = "") -> str:
    """Renders one template text with `values` as .Values (for self-tests)."""
    chart = Chart.__new__(Chart)
    chart.defines = {}
    parse(defines, "defines", chart.defines)
    nodes = parse(source, "inline", chart.defines)
    top = {"Values": floats(values or {}), "Release": {"Name": "r", "Namespace": "n", "Service": "Helm"},
           "Chart": {"Name": "c", "Version": "1.0.0", "AppVersion": "1.0.0"}, "Template": {"BasePath": "c/templates"}}
    return Exec(chart, top).run(nodes, top)
