"""Entry point: python -m luminet_jax.main --config configs/FILE.py[:ARG] --workdir DIR.

Overrides: --config.batch_size=128 --config.teacher.checkpoint=PATH (the config is locked,
so a misspelled key fails). Several processes (hosts) join through `jax.distributed` when
--multihost is given, or automatically when JAX_COORDINATOR_ADDRESS is set or a SLURM job
step has several tasks. JAX detects the process count and id on SLURM, Open MPI and
Kubernetes/GKE clusters; elsewhere set JAX_COORDINATOR_ADDRESS=host:port,
JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process.
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from luminet_jax import metrics_io, train

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Call jax.distributed.initialize() (default: detect from the env)."
)
flags.mark_flags_as_required(["config", "workdir"])


def _is_multiprocess() -> bool:
    if _MULTIHOST.value is not None:
        return _MULTIHOST.value
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in os.environ


def _env_int(name: str) -> int | None:
    return int(os.environ[name]) if os.environ.get(name) else None


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
    _hide_gpus_from_tf()
    metrics_io.quiet_library_logs()
    if _is_multiprocess():
        jax.distributed.initialize(
            num_processes=_env_int("JAX_NUM_PROCESSES"), process_id=_env_int("JAX_PROCESS_ID")
        )
    config = _CONFIG.value
    logging.info("Config:\n%s", config)
    logging.info(
        "Process %d/%d; %d local / %d global devices: %s",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.local_devices(),
    )
    train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
