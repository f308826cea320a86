"""Entry point: luminet-train (= python -m luminet_jax.main) --config NAME[:ARG] --workdir DIR.

--config: a shipped config's name (`quickstart:teacher`) or a config file's path; overrides
such as --config.teacher.checkpoint=PATH (the config is locked: a misspelled key fails).

Several processes (hosts): one per host with --coordinator_address=HOST:PORT (process 0's),
--num_processes=N and --process_id=I; without them `jax.distributed.initialize()` detects
SLURM, Open MPI and Kubernetes/GKE, or reads JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
JAX_PROCESS_ID; --multihost forces or skips that.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from luminet_jax import cli, launch

PROG = cli.command("luminet_jax.main", "luminet-train")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "A shipped config's name or a config file, [:ARG].", lock_config=True
)
cli.accept_config_names(_CONFIG)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Call jax.distributed.initialize() (default: detect from the env)."
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 (several processes)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..N-1.")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "initialization_timeout", 60, "Seconds to wait for all processes to join."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    cli.quiet_logs()
    distributed = launch.distributed_args(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        timeout_s=_INIT_TIMEOUT.value,
        multihost=_MULTIHOST.value,
    )
    launch.initialize_distributed(distributed)
    config, workdir = _CONFIG.value, _WORKDIR.value
    config_file = config_flags.get_config_filename(flags.FLAGS["config"]).partition(":")[0]
    launch.preflight(config, config_name=config_file, prog=PROG)
    import jax  # noqa: PLC0415

    launch.check_batch(config, jax.device_count())
    cache_dir = launch.enable_compilation_cache(config.get("compile_cache", "auto"))
    from luminet_jax import train  # noqa: PLC0415  (imports orbax: after quiet_logs)

    launch.log_start(config, workdir, cache_dir=cache_dir)
    if jax.process_index() == 0:
        launch.write_config(config, workdir)
    try:
        train.train_and_evaluate(config, workdir)
    finally:
        if jax.process_count() > 1:  # a barrier: no process leaves while others still save
            jax.distributed.shutdown()


def run() -> None:
    """The console script `luminet-train`."""
    cli.adopt_key_flags(__name__)
    app.run(cli.guarded(main, prog=PROG))


if __name__ == "__main__":
    app.run(cli.guarded(main, prog=PROG))
