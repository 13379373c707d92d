"""Multi-turn environments (`reset`/`step`), tool-call parsing, tools and the sandbox that runs untrusted code.
Trajectories are run by `rlx.rollout.turns`; nothing here knows about the learner."""

from rlx.envs.base import EnvContext, Environment, Environments, load_environments
from rlx.envs.config import EnvConfig
from rlx.envs.parsing import TOOL_FORMATS, ToolCall, ToolFormat, parse_hermes, parse_plain, tool_format
from rlx.envs.sandbox import SandboxConfig, SandboxResult, run_python
from rlx.envs.tool_env import ToolEnvironment
from rlx.envs.tools import BUILTIN_TOOLS, Tool, ToolError, calculator, resolve_tools, tool

__all__ = [
    "BUILTIN_TOOLS", "TOOL_FORMATS", "EnvConfig", "EnvContext", "Environment", "Environments", "SandboxConfig", "SandboxResult",
    "Tool", "ToolCall", "ToolEnvironment", "ToolError", "ToolFormat", "calculator", "load_environments", "parse_hermes",
    "parse_plain", "resolve_tools", "run_python", "tool", "tool_format",
]
