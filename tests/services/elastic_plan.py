"""A `run.hooks` hook that rescales the run it is in on cue, for the elastic-generator test (it runs in the learner's
process after each step is logged, so the next step is already admitted and handed to a generator).

`RLX_TEST_SCALE_PLAN="1:2,4:await,5:1"`: after step 1 ask for 2 generators (through `rlx.scale`, as the command line
does) and wait until `generator-1` is ready (its supervisor took its `ready`: `idle` in services.json); after step 4
wait until `generator-1` is ready again after a restart; after step 5 ask for 1 generator. `RLX_TEST_SCALE_RUN` is the run directory.
"""

import json
import os
import time
from pathlib import Path

from rlx.scale import scale

READY_WITHIN_S = 120.0  # a generator not ready by then fails the test instead of hanging it


def rescale_on_cue(step, metrics):
    run = Path(os.environ["RLX_TEST_SCALE_RUN"])
    plan = dict(item.split(":") for item in os.environ["RLX_TEST_SCALE_PLAN"].split(","))
    action = plan.get(str(step))
    if action is None:
        return
    if action != "await":
        assert scale(run, int(action)) == 0
    if action != "1":
        _await_ready(run, "generator-1", restarts=int(action == "await"))


def _await_ready(run: Path, name: str, restarts: int) -> None:
    began = time.monotonic()
    while time.monotonic() - began < READY_WITHIN_S:
        state = json.loads((run / "services.json").read_text()).get(name, {})
        if (state.get("status"), state.get("restarts")) == ("idle", restarts):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{name} not ready within {READY_WITHIN_S} s")
