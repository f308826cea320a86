"""Several seeds in one job (`config.seeds`, luminet_jax/seed_runs.py).

The runs' step is the ordinary per-shard step `jax.vmap`ped over stacked states, so a
k-seed job must equal k separate runs: exactly in float64 at the step level, and to float32
reordering noise end to end, with each run written to `W/seed{k}/` as the run with
`config.seed=k` writes `W/`.
"""

from __future__ import annotations

import json

import chex
import image_data
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from steps_test import SPE, TinyCNN, _setup
from train_test import _config, _losses

from experiments.common import results
from luminet_jax import metrics_io, seed_runs, sharding, steps, train


def test_parse_seeds():
    assert seed_runs.parse_seeds("") == [] and seed_runs.parse_seeds(" 0, 1,2 ") == [0, 1, 2]
    with pytest.raises(ValueError, match="repeats seed"):
        seed_runs.parse_seeds("0,1,0")
    with pytest.raises(ValueError, match="not a non-negative integer"):
        seed_runs.parse_seeds("0,x")


@pytest.mark.integration  # heavy: the second tier
def test_seed_runs_step_equals_separate_steps_float64():
    """3 runs, 3 steps, float64: the vmapped sharded step == each run's own step."""
    seeds = [0, 5, 7]
    mesh = sharding.make_mesh()
    rep = sharding.replicated(mesh)
    with jax.enable_x64(True):
        # Host copies: the sharded steps donate their input states.
        setups = [jax.device_get(_setup(jnp.float64, seed=s)[:3]) + _setup()[3:] for s in seeds]
        tx, lr_fn = setups[0][3], setups[0][4]
        t_vars = setups[0][1]
        distiller = steps_distiller()
        raw = steps.make_train_step(
            TinyCNN(axis_name="data"), TinyCNN(axis_name="data"), distiller, tx,
            steps_per_epoch=SPE, axis_name="data", lr_fn=lr_fn,
        )  # fmt: skip
        single = sharding.shard_train_step(raw, mesh)
        want_states, want_metrics = [], []
        for s0, _, batch, _, _ in setups:
            st = jax.device_put(s0, rep)
            run_metrics = []
            for _ in range(3):
                st, m = single(st, jax.device_put(t_vars, rep), sharding.to_global(batch, mesh))
                run_metrics.append(m)
            want_states.append(st)
            want_metrics.append(run_metrics)
        stacked = seed_runs.stack([s[0] for s in setups], mesh)
        batches = seed_runs.to_global([s[2] for s in setups], mesh)
        # The runs' step puts each seed in its batch; the separate steps above used
        # dropout_seed 0 for every run, so give the runs seed 0 too (TinyCNN has no
        # dropout; the seeds' effect on keys is covered end to end below).
        multi = seed_runs.shard_train_step(raw, mesh, [0, 0, 0])
        got_metrics = []
        for _ in range(3):
            stacked, m = multi(stacked, jax.device_put(t_vars, rep), batches)
            got_metrics.append(m)
        for k in range(3):
            chex.assert_trees_all_close(
                seed_runs.run_slice(stacked, k), want_states[k], rtol=1e-10, atol=1e-12
            )
            for i in range(3):
                chex.assert_trees_all_close(
                    seed_runs.run_slice(got_metrics[i], k),
                    want_metrics[k][i],
                    rtol=1e-10,
                    atol=1e-12,
                )
        assert stacked.params["fc"]["kernel"].dtype == jnp.float64
        # The runs really differ (own init and data).
        assert not np.allclose(seed_runs.run_slice(stacked, 0).params["fc"]["kernel"],
                               seed_runs.run_slice(stacked, 1).params["fc"]["kernel"])  # fmt: skip


def steps_distiller():
    from luminet_jax import distillers  # noqa: PLC0415

    return distillers.get_distiller("luminet", ce_weight=2.0, alpha=3.0, temperature=4.0)


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> str:
    return image_data.colour_folder(tmp_path_factory.mktemp("colour"), train=16, test=16)


def _seeds_config(method="teacher", *, seeds="", seed=0, data, steps=4, **kw):
    config = _config(method, steps=steps, data=data, ckpt_every_steps=2, **kw)
    config.seeds, config.seed = seeds, seed
    return config


@pytest.mark.integration
@pytest.mark.slow  # six runs (~2.5 min on 2 cores); the float64 step test stays default
def test_three_seeds_in_one_job_equal_three_runs(colour_data, tmp_path):
    job_dir = tmp_path / "group" / "vanilla"  # the studies' layout: ROOT/<group>/<method>/
    job = train.train_and_evaluate(_seeds_config(seeds="0,1,2", data=colour_data), str(job_dir))
    assert job["seeds"] == [0, 1, 2] and len(job["runs"]) == 3
    for k in range(3):
        alone_dir = tmp_path / f"alone{k}"
        alone = train.train_and_evaluate(_seeds_config(seed=k, data=colour_data), str(alone_dir))
        run_dir = job_dir / f"seed{k}"
        # The same per-step losses (float32 reordering noise at most) ...
        np.testing.assert_allclose(_losses(run_dir), _losses(alone_dir), rtol=1e-3)
        # ... the same files, and a summary like the separate run's.
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(
            p.name for p in alone_dir.iterdir()
        )
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["seed"] == k and summary["steps"] == alone["steps"] == 4
        chex.assert_trees_all_close(
            seed_runs.run_slice(job["state"], k).params, alone["state"].params, rtol=1e-3, atol=1e-4
        )
    # Different seeds: different runs.
    assert _losses(job_dir / "seed0") != _losses(job_dir / "seed1")
    # The studies' collector reads the job as three runs (ROOT/<group>/<method>/seed<k>).
    found = results.collect(str(tmp_path))
    assert [(r.group, r.method, r.seed) for r in found] == [
        ("group", "vanilla", k) for k in range(3)
    ]


@pytest.mark.integration
@pytest.mark.slow  # four runs (~2 min on 2 cores); run with -m slow
def test_seeds_job_with_a_teacher_resumes(colour_data, tmp_path):
    teacher_dir = tmp_path / "teacher"
    train.train_and_evaluate(_seeds_config(data=colour_data, steps=2), str(teacher_dir))
    kw = dict(seeds="3,4", data=colour_data, teacher_dir=str(teacher_dir))
    full = train.train_and_evaluate(_seeds_config("luminet", **kw), str(tmp_path / "full"))
    assert all(np.isfinite(_losses(tmp_path / "full" / "seed3", "train/loss_kd")))
    # Stop after 2 steps, then resume the job to 4: the same as the uninterrupted job.
    part = tmp_path / "part"
    train.train_and_evaluate(_seeds_config("luminet", steps=2, **kw), str(part))
    resumed = train.train_and_evaluate(_seeds_config("luminet", **kw), str(part))
    chex.assert_trees_all_close(resumed["state"].params, full["state"].params, rtol=1e-5)
    records = metrics_io.read_metrics(str(part / "seed4"))
    assert [r["step"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    assert resumed["teacher_top1"][0] == pytest.approx(full["teacher_top1"][1])
