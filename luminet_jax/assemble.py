"""What the loop runs, built from plain arguments: the frozen teacher and a distiller's parts.

`build_teacher` loads one teacher (or an ensemble of several) once; `init_distiller` calls
a distiller's `init` on features of a dummy batch. `train.py` reads the config and calls
these with plain values.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from luminet_jax import checkpoint, models, sharding

AXIS = sharding.DATA_AXIS


def split_names(text: str) -> list[str]:
    """Splits a comma-separated config string ("" -> [])."""
    return [part.strip() for part in str(text or "").split(",") if part.strip()]


def init_distiller(
    distiller: Any,
    rng: jax.Array,
    *,
    student: tuple[Any, Any],
    teacher: tuple[Any, Any] | None,
    image_size: int,
    num_train: int,
    names: tuple[str, str],
) -> dict[str, Any]:
    """A distiller's learnable parts and state (`distiller.init`), from features of a dummy
    batch at the run's image size; {} for distillers without them.

    A feature key the models lack raises a KeyError naming the models.
    """
    dummy = jnp.zeros((2, image_size, image_size, 3), jnp.float32)
    s_module, s_vars = student
    _, s_feats = s_module.apply(s_vars, dummy, train=False)
    t_module, t_vars, t_feats = None, None, None
    if teacher is not None:
        t_module, t_vars = teacher
        _, t_feats = t_module.apply(t_vars, dummy, train=False)
    try:
        return distiller.init(
            rng,
            s_feats,
            t_feats,
            teacher_variables=t_vars,
            num_train=num_train,
            teacher=t_module,
        )
    except KeyError as e:
        raise KeyError(
            f"{type(distiller).__name__} with student {names[0]!r} and teacher "
            f"{names[1] or 'none'!r}: {e.args[0] if e.args else e}"
        ) from e


def build_teacher(
    teacher_cfg: ml_collections.ConfigDict, *, num_classes: int, image_size: int, dtype: Any
) -> tuple[Any, Any, str]:
    """The teacher module (an ensemble for several names) and its loaded variables."""
    names, paths = split_names(teacher_cfg.name), split_names(teacher_cfg.checkpoint)
    # Further keys of the teacher section are model fields (e.g. a ViT's patch_size).
    model_kwargs = {k: v for k, v in teacher_cfg.items() if k not in ("name", "checkpoint")}
    if not names:
        raise ValueError("The distiller uses a teacher but config.teacher.name is empty.")
    if len(paths) != len(names):
        raise ValueError(
            f"config.teacher.checkpoint must give one path per teacher ({names}), got "
            f"{paths or 'none'}; set --config.teacher.checkpoint=PATH[,PATH...] (an orbax "
            "dir, a PyTorch-keyed .npz, or a teacher run's workdir)."
        )
    members = [
        models.get_model(name, num_classes=num_classes, dtype=dtype, axis_name=AXIS, **model_kwargs)
        for name in names
    ]
    member_vars = []
    for name, path in zip(names, paths):
        logging.info("Loading teacher %s from %s", name, path)
        member_vars.append(
            checkpoint.load_teacher(
                path, name, num_classes=num_classes, image_size=image_size, **model_kwargs
            )
        )
    if len(members) == 1:
        return members[0], member_vars[0], names[0]
    ensemble = models.make_ensemble(members)
    return ensemble, ensemble.combine_variables(member_vars), "+".join(names)
