"""Several independent runs (one per seed) trained together in one job.

`config.seeds = "0,1,2"` trains one student per seed inside one compiled step: the states
are stacked along a leading "member" axis and the per-shard train step is `jax.vmap`ped
over it, so the members share each device, the teacher's variables (loaded once) and the
data-parallel mesh, while each keeps its own initialization, data order, augmentation and
dropout keys. Member k is the run that `config.seed = k` would train: the trainer writes it
to `W/seed{k}/` (checkpoints, metrics, summary) exactly as that run writes `W/`.

Batches of the members are stacked as (S, B, ...) and split over "data" along axis 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from luminet_jax import sharding

DATA_AXIS = sharding.DATA_AXIS
MEMBER_BATCH = P(None, DATA_AXIS)  # (S, B, ...): members replicated, batch split


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; "" -> [] (one ordinary run with `config.seed`).

    Raises:
      ValueError: a seed that is not a non-negative integer, or a seed given twice.
    """
    seeds = []
    for part in str(text or "").split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"config.seeds: {part!r} is not a non-negative integer seed")
        seeds.append(int(part))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(
            f"config.seeds={text!r} repeats seed(s) {repeated}: each member must be an "
            "independent run (its own workdir seed{k}/)."
        )
    return seeds


def member(tree: Any, k: int) -> Any:
    """Member k's slice of a stacked tree."""
    return jax.tree.map(lambda x: x[k], tree)


def stack(trees: Sequence[Any], mesh: Mesh) -> Any:
    """Stacks per-member trees along a new leading axis, replicated on the mesh."""
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *trees)
    return jax.device_put(stacked, sharding.replicated(mesh))


def member_batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, MEMBER_BATCH)


def to_global(local_batches: Sequence[dict[str, Any]], mesh: Mesh) -> dict[str, jax.Array]:
    """Stacks each member's process-local batch into (S, B, ...) global arrays."""
    local = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *local_batches)
    target = member_batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(target, jax.device_get(x)), local
    )


def shard_train_step(train_step: Callable, mesh: Mesh, seeds: Sequence[int]) -> Callable:
    """Jits the per-shard `train_step` vmapped over the members.

    Each member's batch gets its seed as `batch["seed"]`, from which the step draws its
    dropout and distiller keys (as a separate run's step does from its `config.seed`).

    Returns:
      `fn(state, teacher_variables, batch) -> (state, metrics)` on stacked states and
      (S, B, ...) batches; metrics are (S,) arrays.
    """
    seed_array = jax.device_put(jnp.asarray(seeds, jnp.int32), sharding.replicated(mesh))

    def body(state, teacher_variables, batch, member_seeds):
        def one(member_state, member_batch, seed):
            return train_step(member_state, teacher_variables, {**member_batch, "seed": seed})

        return jax.vmap(one)(state, batch, member_seeds)

    sharded = jax.jit(
        jax.shard_map(
            body,
            mesh=mesh,
            in_specs=(P(), P(), MEMBER_BATCH, P()),
            out_specs=(P(), P()),
            check_vma=True,
        ),
        donate_argnums=0,
    )
    return lambda state, teacher_variables, batch: sharded(
        state, teacher_variables, batch, seed_array
    )


def shard_eval_step(eval_step: Callable, mesh: Mesh) -> Callable:
    """Jits the per-shard `eval_step(variables, batch)` vmapped over stacked variables.

    The eval batch is shared by the members; the sums come out with a leading (S,) axis.
    """

    def body(variables, batch):
        return jax.vmap(lambda v: eval_step(v, batch))(variables)

    return jax.jit(
        jax.shard_map(body, mesh=mesh, in_specs=(P(), P(DATA_AXIS)), out_specs=P(), check_vma=True)
    )
