"""Tools: Python functions with a JSON schema of their arguments, and the built-in `calculator` and `python`.

`@tool` makes a `Tool` from a function with type-hinted parameters (str, int, float, bool) and a
docstring. A call's arguments are checked against the schema before the function runs; a wrong
argument, or an exception inside the tool, becomes a `ToolError` whose message is the result
the policy reads.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import operator
from typing import Any, Callable, get_type_hints

from rlx.envs.sandbox import SandboxConfig, run_python
from rlx.plugins import load_object

JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


class ToolError(Exception):
    """A call went wrong; the message is what the policy reads."""


@dataclasses.dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments: {"type": "object", "properties": ..., "required": [...]}

    @property
    def schema(self) -> dict[str, Any]:
        """The tool as chat templates take it (`tools=[...]`, OpenAI's function format)."""
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def __call__(self, arguments: dict[str, Any] | str) -> str:
        """Runs the tool on checked `arguments` (a str goes to its one required parameter); returns its output text."""
        if isinstance(arguments, str):
            arguments = self._plain(arguments)
        self._check(arguments)
        try:
            return str(self.fn(**arguments))
        except ToolError:
            raise
        except Exception as err:  # the tool's failure is the call's result
            raise ToolError(f"{type(err).__name__}: {err}") from None

    def _plain(self, text: str) -> dict[str, Any]:
        """A plain call's text as the one required argument (read as JSON where that is not a string)."""
        required = self.parameters["required"]
        if len(required) != 1:
            raise ToolError(f"{self.name} takes named arguments {sorted(self.parameters['properties'])}")
        if self.parameters["properties"][required[0]]["type"] == "string":
            return {required[0]: text}
        try:
            return {required[0]: json.loads(text)}
        except json.JSONDecodeError:
            raise ToolError(f"{self.name}: {text!r} is not a {self.parameters['properties'][required[0]]['type']}") from None

    def _check(self, arguments: dict[str, Any]) -> None:
        properties = self.parameters["properties"]
        missing = [name for name in self.parameters["required"] if name not in arguments]
        unknown = [name for name in arguments if name not in properties]
        if missing or unknown:
            raise ToolError(f"{self.name} needs arguments {sorted(properties)}" + (f"; missing {missing}" if missing else "")
                            + (f"; unknown {unknown}" if unknown else ""))
        for name, value in arguments.items():
            expected = properties[name]["type"]
            if not _matches(value, expected):
                raise ToolError(f"{self.name}: argument {name!r} must be a {expected}, got {type(value).__name__}")


def _matches(value: Any, expected: str) -> bool:
    if isinstance(value, bool):
        return expected == "boolean"
    return {"string": isinstance(value, str), "integer": isinstance(value, int),
            "number": isinstance(value, (int, float)), "boolean": False}[expected]


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """`@tool` or `@tool(name=...)`: a `Tool` whose schema comes from `fn`'s signature and docstring."""
    if fn is None:
        return lambda f: tool(f, name=name)
    hints = get_type_hints(fn)
    properties, required = {}, []
    for parameter in inspect.signature(fn).parameters.values():
        kind = hints.get(parameter.name)
        if kind not in JSON_TYPES:
            raise TypeError(f"tool {fn.__name__}: parameter {parameter.name!r} needs a type hint among {[t.__name__ for t in JSON_TYPES]}")
        properties[parameter.name] = {"type": JSON_TYPES[kind]}
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    description = inspect.getdoc(fn) or ""
    return Tool(name or fn.__name__, fn, description, {"type": "object", "properties": properties, "required": required})


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_BITS = 512  # integers up to ~154 digits: bounds the work a single expression can ask for


@tool
def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression: numbers, + - * / // % ** and parentheses."""
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError("bad expression") from None
    return str(_evaluate(tree.body))


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > MAX_BITS:
            raise ToolError("result too large")
        try:
            return _bounded(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("result too large") from None
    raise ToolError("bad expression")


def _bounded(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ToolError("result too large")
    return value


def python_tool(config: SandboxConfig) -> Tool:
    """`python(code)`: runs code in the sandbox (`rlx.envs.sandbox`) and returns what it printed, and any error."""

    def python(code: str) -> str:
        result = run_python(code, config)
        if not result.ok:
            raise ToolError(result.report() or "the code failed without output")
        return result.report()

    python.__doc__ = "Runs Python code in a sandbox and returns what it printed (print the values you need)."
    return tool(python)


BUILTIN_TOOLS: dict[str, Callable[[SandboxConfig], Tool]] = {
    "calculator": lambda sandbox: calculator,
    "python": python_tool,
}


def resolve_tools(names: tuple[str, ...], sandbox: SandboxConfig) -> dict[str, Tool]:
    """Tools by name: built-in ones, or `package.module:attribute` holding a `Tool` or a type-hinted function."""
    tools = {}
    for name in names:
        if name in BUILTIN_TOOLS:
            found = BUILTIN_TOOLS[name](sandbox)
        elif ":" in name:
            found = load_object(name)
            found = found if isinstance(found, Tool) else tool(found)
        else:
            raise ValueError(f"env.tools: {name!r} is not a built-in tool ({', '.join(BUILTIN_TOOLS)}) or a 'package.module:attribute'")
        if found.name in tools:
            raise ValueError(f"env.tools names two tools {found.name!r}")
        tools[found.name] = found
    return tools
