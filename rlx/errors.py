"""The error boundary of every command (`rlx.launch`, `rlx.serve`, `rlx.eval`, `rlx.export`, `rlx.warmstart`).

Two kinds of failure reach a user. Their own input is wrong (a config value, a file, a dataset, a
plug-in, an output directory): one line that names the input and the fix, exit code 2, no
traceback. Or a run went bad while training (non-finite updates, a failing reward function): one
line saying why it stopped, exit code 3. Anything else is a bug in rlx: its traceback and exit 1.
`--debug` prints the traceback for every kind.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable


class UserError(ValueError):
    """Something the user gave is wrong; the message names it (file, line, key, value) and says how to fix it."""

    label = "error"


class MissingInputError(UserError, FileNotFoundError):
    """A file or directory the user named (a dataset, a checkpoint step) does not exist."""


class RunStopped(RuntimeError):
    """A run went bad and was stopped before it could report success; the message says why and what to change."""

    label = "run stopped"


EXIT_USER_ERROR, EXIT_RUN_STOPPED, EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED = 2, 3, 1, 130


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="print the traceback of every error, also of errors in your input")


def run_guarded(work: Callable[[], int], debug: bool = False) -> int:
    """`work()`'s exit code; errors become a message and an exit code as the module docstring says."""
    try:
        return work()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, RunStopped) as err:
        if debug:
            traceback.print_exc()
        print(f"{err.label}: {err}", file=sys.stderr)
        return EXIT_USER_ERROR if isinstance(err, UserError) else EXIT_RUN_STOPPED
    except Exception:
        traceback.print_exc()
        print("internal error: this is a bug in rlx, not in your input; please report it with the traceback above", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
