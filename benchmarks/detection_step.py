"""Times the Faster R-CNN + FPN train step (vanilla: RPN + RoI heads, backward, SGD update).

    python benchmarks/detection_step.py --sizes tiny,tb_student,r18_fpn --batch 2 --steps 5 \
        [--throughput-steps 10] [--devices 1] [--cache-dir auto|DIR|off] [--out results.json]

Each step is `detection.steps.make_train_step` jitted by `sharding.shard_train_step` on a
synthetic batch already on the devices (random images, 4 boxes per image), as the trainer
runs it (luminet_jax/tasks/detection.py). Sizes:

  tiny        configs/detection_smoke.py's detector, 128 x 128 images
  tb_student  configs/tiny_boxes_frcnn.py's student (R-18 at half width), 128 x 128
  tb_teacher  its teacher (full-width R-18), 128 x 128
  t4_student, t4_teacher  configs/tiny_boxes_table4.py's pair (R-18 at quarter / half width,
              whole backbone trained, 20 classes), 128 x 128
  r18_fpn     detectron2's R-18-FPN (the COCO student), 800 x 800 padded images, 80 classes
  r50_fpn     detectron2's R-50-FPN, 800 x 800 (detectron2's published training speed is
              for this model at short side 800, see benchmarks/README.md)
  r101_fpn    detectron2's R-101-FPN, 800 x 800 (Table 4's COCO teacher)

Reported: compile seconds, median ms/step and images/s (latency: each step waited for), and
with `--throughput-steps` the same back to back with one wait at the end. Importable without
TensorFlow and ml_collections (the config files' detector fields are pinned here).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The detector fields of configs/tiny_boxes_frcnn.py and configs/detection_smoke.py.
_TB = dict(
    fpn_channels=64,
    fc_dim=256,
    rpn_pre_nms_topk_train=256,
    rpn_pre_nms_topk_test=256,
    rpn_post_nms_topk_train=128,
    rpn_post_nms_topk_test=128,
    rpn_batch_size_per_image=128,
    roi_batch_size_per_image=64,
)
SIZES = {  # name -> (detector, fields, image side, classes)
    "tiny": (
        "faster_rcnn_r18_fpn",
        dict(
            stem_channels=8,
            fpn_channels=16,
            fc_dim=32,
            rpn_pre_nms_topk_train=64,
            rpn_pre_nms_topk_test=64,
            rpn_post_nms_topk_train=32,
            rpn_post_nms_topk_test=64,
            rpn_batch_size_per_image=32,
            roi_batch_size_per_image=16,
        ),  # fmt: skip
        128,
        200,
    ),
    "tb_student": ("faster_rcnn_r18_fpn", dict(_TB, stem_channels=32), 128, 200),
    "tb_teacher": ("faster_rcnn_r18_fpn", dict(_TB, stem_channels=64), 128, 200),
    # configs/tiny_boxes_table4.py: the reduced Table 4 pair (20 classes, nothing frozen).
    "t4_student": (
        "faster_rcnn_r18_fpn",
        dict(
            _TB,
            stem_channels=16,
            fpn_channels=32,
            fc_dim=128,
            roi_batch_size_per_image=32,
            freeze_at=0,
        ),
        128,
        20,
    ),  # fmt: skip
    "t4_teacher": (
        "faster_rcnn_r18_fpn",
        dict(_TB, stem_channels=32, fpn_channels=64, fc_dim=256, freeze_at=0),
        128,
        20,
    ),
    "r18_fpn": ("faster_rcnn_r18_fpn", {}, 800, 80),
    "r50_fpn": ("faster_rcnn_r50_fpn", {}, 800, 80),
    "r101_fpn": ("faster_rcnn_r101_fpn", {}, 800, 80),
}


def synthetic_batch(batch: int, side: int, num_classes: int, seed: int = 0) -> dict:
    """Random normalized images with 4 random boxes each (data.py's batch layout)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    g = 4
    xy = rng.uniform(0, side * 0.6, (batch, g, 2))
    wh = rng.uniform(side * 0.1, side * 0.4, (batch, g, 2))
    return {
        "image": rng.normal(0, 1, (batch, side, side, 3)).astype(np.float32),
        "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "classes": rng.integers(0, num_classes, (batch, g)).astype(np.int32),
        "gt_mask": np.ones((batch, g), bool),
        "image_size": np.full((batch, 2), side, np.int32),
        "index": np.arange(batch, dtype=np.int32),
    }


def time_size(
    name: str, *, batch: int, steps: int, devices: int, throughput_steps: int = 0
) -> dict:
    """Compiles and times one size's train step (latency: each step waited for; with
    `throughput_steps`, also that many steps back to back with one wait at the end)."""
    import jax
    import jax.numpy as jnp

    from luminet_jax import optim, sharding
    from luminet_jax import state as state_lib
    from luminet_jax.detection import rcnn
    from luminet_jax.detection import steps as det_steps

    detector, fields, side, num_classes = SIZES[name]
    model = rcnn.get_detector(detector, num_classes=num_classes, **fields)
    mesh = sharding.make_mesh(jax.devices()[:devices])
    tx = optim.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    v = rcnn.init_variables(model, 0, image_size=(side, side))
    state = state_lib.create_train_state({"params": v["params"], "batch_stats": v["frozen"]}, tx)
    state = jax.device_put(state, sharding.replicated(mesh))
    step = sharding.shard_train_step(
        det_steps.make_train_step(model, tx, axis_name=sharding.DATA_AXIS), mesh
    )
    data = sharding.to_global(synthetic_batch(batch, side, num_classes), mesh)
    start = time.perf_counter()
    state, metrics = step(state, None, data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = step(state, None, data)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    ms = 1000 * statistics.median(times)
    extra = {}
    if throughput_steps > 0:
        start = time.perf_counter()
        for _ in range(throughput_steps):
            state, metrics = step(state, None, data)
        jax.block_until_ready(metrics)
        t_ms = 1000 * (time.perf_counter() - start) / throughput_steps
        extra = dict(throughput_ms_per_step=round(t_ms, 2),
                     throughput_images_per_s=round(batch * 1000 / t_ms, 2))  # fmt: skip
    params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "size": name,
        "detector": detector,
        "image_side": side,
        "batch": batch,
        "devices": devices,
        "platform": jax.devices()[0].platform,
        "params": int(params),
        "compile_s": round(compile_s, 1),
        "ms_per_step": round(ms, 1),
        "images_per_s": round(batch * 1000 / ms, 2),
        **extra,
        "loss_finite": bool(jnp.isfinite(metrics["loss"])),
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,tb_student", help=f"of {sorted(SIZES)}")
    parser.add_argument("--batch", type=int, default=2, help="global batch (images)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after compiling")
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--throughput-steps", type=int, default=0, help="0: latency only")
    parser.add_argument("--cache-dir", default="auto", help="compile cache: auto, DIR, off")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    from luminet_jax import launch

    launch.enable_compilation_cache(args.cache_dir)
    results = []
    for name in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if name not in SIZES:
            parser.error(f"unknown size {name!r}; known: {sorted(SIZES)}")
        result = time_size(
            name, batch=args.batch, steps=args.steps, devices=args.devices,
            throughput_steps=args.throughput_steps,
        )  # fmt: skip
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
