"""Entry point: luminet-train (= python -m luminet_jax.main) --config NAME[:ARG] --workdir DIR.

--config takes a shipped config's name (`cifar100_res32x4_res8x4:method=luminet`,
`quickstart:teacher`) or the path of a config file. Overrides: --config.batch_size=128
--config.teacher.checkpoint=PATH (the config is locked, so a misspelled key fails).

Several processes (hosts): start one per host with --coordinator_address=HOST:PORT (process
0's host; it serves there), --num_processes=N and --process_id=I. Without them the cluster
environment decides, as `jax.distributed.initialize()` does: on SLURM (a job step with
several tasks), Open MPI and Kubernetes/GKE it detects them, and JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID set them elsewhere; --multihost forces or skips that.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
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


def _hide_gpus_from_tf() -> None:
    """The input pipeline uses TF on the CPU only: keep it off accelerator memory."""
    try:
        import tensorflow as tf  # noqa: PLC0415
    except ImportError:  # TF is only needed for the tf.data / TFDS datasets
        return
    tf.config.set_visible_devices([], "GPU")


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
    name = os.path.basename(config_file).removesuffix(".py")
    launch.preflight(config, config_name=name, prog=PROG)
    import jax  # noqa: PLC0415

    launch.check_batch(config, jax.device_count())
    _hide_gpus_from_tf()
    from luminet_jax import train  # noqa: PLC0415  (imports orbax: after quiet_logs)

    ds, teacher = config.dataset, config.teacher
    logging.info(
        "Run: %s, student %s%s on %s (batch %d), workdir %s",
        config.distiller.name,
        config.student.name,
        f", teacher {teacher.name} from {teacher.checkpoint}" if teacher.checkpoint else "",
        ds.name + (f" in {ds.data_dir}" if ds.data_dir else ""),
        config.batch_size,
        os.path.abspath(workdir),
    )
    device = jax.local_devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    logging.info(
        "Devices: process %d of %d, %d local / %d global %s devices%s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        device.platform,
        f" ({kind})" if kind != device.platform else "",
    )
    if jax.process_index() == 0:
        launch.write_config(config, workdir)
    logging.debug("Config:\n%s", config)
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
