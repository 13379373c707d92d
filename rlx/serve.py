"""`python -m rlx.serve --config configs/demo.yaml [--host 127.0.0.1] [--port 9000] [section.key=value ...]`.

Serves a run's policy over JetStream's gRPC protocol (`jetstream.core.proto` Orchestrator
service: `Decode`, `HealthCheck`) with rlx's engine under JetStream's orchestrator. Weights
come from the latest orbax checkpoint under `run.output_dir`, or are freshly initialized
(with a warning) when the run has none. Needs the extra: `pip install -e '.[jetstream]'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import socket
import sys
from pathlib import Path

from rlx.config import Config, load_config
from rlx.errors import UserError, add_debug_flag, run_guarded
from rlx.logs import configure_logging

log = logging.getLogger("rlx.serve")


def build_server(config: Config, host: str, port: int):
    """The started gRPC server (`.address`, `.wait()`, `.stop()`) for `config`'s run."""
    from flax import nnx

    from rlx.data import load_task
    from rlx.models import Qwen3
    from rlx.rollout import build_engine
    from rlx.rollout.jetstream_compat import GrpcServer, jetstream_engine, start_driver

    tokenizer = load_task(config.data).tokenizer
    model_config = config.model.with_vocab(tokenizer.vocab_size)
    graphdef, params = nnx.split(Qwen3(model_config, rngs=nnx.Rngs(config.run.seed)))
    params = _restore_params(Path(config.run.output_dir) / "checkpoints", params)
    rollout = dataclasses.replace(config.rollout, backend="jetstream")  # an engine shaped for JetStream's orchestrator
    engine = build_engine(graphdef, params, model_config, rollout, config.data.max_prompt_len,
                          eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, tokenizer=tokenizer)
    adapter = jetstream_engine(engine)
    driver = start_driver(adapter, adapter.load_params())
    try:
        return GrpcServer(driver, host, port)
    except BaseException:
        driver.stop()  # its threads would keep a failed server's process alive
        raise


def _restore_params(directory: Path, params):
    """The latest checkpoint's weights, or `params` (with a warning) when there is none."""
    from rlx.learner import Checkpointer

    if not directory.is_dir():
        log.warning("no checkpoint under %s: serving freshly initialized weights", directory)
        return params
    checkpointer = Checkpointer(directory, keep=1)
    try:
        step = checkpointer.latest_step()
        if step is None:
            log.warning("no checkpoint under %s: serving freshly initialized weights", directory)
            return params
        trees, _ = checkpointer.restore(step, {"params": params})
        log.info("serving the weights of step %d from %s", step, directory)
        return trees["params"]
    finally:
        checkpointer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlx.serve", description="Serve an rlx policy over JetStream's gRPC protocol.")
    parser.add_argument("--config", required=True, help="YAML file under configs/ (the run to serve)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind; 0.0.0.0 exposes the server to the network")
    parser.add_argument("--port", type=int, default=9000, help="0 picks a free port")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    return run_guarded(lambda: _serve(args), args.debug)


def _serve(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    # JetStream's orchestrator logs every decode step to the root logger at INFO: the root stays at WARNING.
    configure_logging(config.run.log_level)
    check_port(args.host, args.port)  # before minutes of model set-up
    server = build_server(config, args.host, args.port)
    print(f"serving on {server.address} (JetStream gRPC Orchestrator service)", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


def check_port(host: str, port: int) -> None:
    """Raises UserError when `host:port` cannot be bound (in use, or not an address of this machine)."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number (0..65535)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.bind((host, port))
    except OSError as err:
        raise UserError(f"cannot serve on {host}:{port}: {err.strerror or err}; pick another --port (0 picks a free one) "
                        "or stop what is using it") from None


if __name__ == "__main__":
    sys.exit(main())
