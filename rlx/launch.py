"""`python -m rlx.launch --config configs/demo.yaml [section.key=value ...]`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from rlx.config import Config, load_config
from rlx.errors import add_debug_flag, run_guarded
from rlx.logs import configure_logging


def start_devices(config: Config) -> None:
    """Simulated CPU devices for the placement (each process's share of them), and `jax.distributed` when
    configured; before JAX's backend starts."""
    import jax

    from rlx.parallel.distributed import expected_processes, initialize_distributed

    devices = config.parallel.devices_per_process(expected_processes(config.parallel.distributed))
    if devices > 1:
        # On a CPU host the placement's devices are simulated (e.g. configs/demo_async.yaml); accelerators ignore this.
        try:
            jax.config.update("jax_num_cpu_devices", devices)
        except RuntimeError:
            pass  # a backend already started (e.g. under pytest); role_meshes checks the device count
    initialize_distributed(config.parallel.distributed)


def main(argv: list[str] | None = None) -> int:
    sections = ", ".join(field.name for field in dataclasses.fields(Config))
    parser = argparse.ArgumentParser(prog="python -m rlx.launch", description="Run an rlx RL post-training job.",
                                     epilog=f"config sections: {sections} (`rlx --help` says what each holds)")
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. run.steps=20")
    parser.add_argument("--dry-run", action="store_true",
                        help="compile the learner and generator steps on abstract arrays over a simulated mesh and print the plan")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: _launch(args), args.debug)


def _launch(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    configure_logging(config.run.log_level)
    if args.dry_run:
        from rlx.services.plan import dry_run, prepare_planning_backend

        prepare_planning_backend(config.parallel.num_devices)  # before anything starts a JAX backend
        print(dry_run(config).render())
        return 0
    from rlx.parallel.distributed import fail_fast
    from rlx.services import train  # after config checks, so a typo fails before JAX starts
    from rlx.services.preflight import check_run
    from rlx.services.supervisor import HangWatch, child_command, die_with_supervisor, supervise, supervised

    if supervised():
        die_with_supervisor()
    check_run(config)  # output directory and plug-ins, before any model is built
    if config.services.backend != "local" and not supervised():
        watch = HangWatch(Path(config.run.output_dir) / "services.json", config.services.hang_timeout_s)
        return supervise(child_command(args.config, args.overrides, args.debug), config.services.max_restarts, watch)
    start_devices(config)
    with fail_fast():  # several processes: one that fails stops the others instead of leaving them in a collective
        curve = train(config)
    if curve is not None:  # None on every process but the first, which writes the outputs
        print(f"done: metrics in {config.run.output_dir}/metrics.jsonl, curve in {curve}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
