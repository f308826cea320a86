"""FLOPs per train step of the COCO student (R-18-FPN), square padding vs aspect-ratio buckets.

    python benchmarks/detection_flops.py [--batch 8] [--compile] [--out results.json]

Lowers `detection.steps.make_train_step` (vanilla: backbone, FPN, RPN, RoI heads, backward,
SGD) for detectron2's R-18-FPN with 80 classes on abstract inputs (nothing runs) at each pad
size, and reads XLA's cost analysis ("flops"): `Lowered.cost_analysis()` (the HLO before
optimization, seconds) or, with --compile, `Compiled.cost_analysis()` (after optimization,
minutes on a CPU). A while loop's body is counted once, so the NMS loops count one block
(the old serial loop one kept box): either way a few MFLOPs against the convolutions' TFLOPs.

"before": every image padded to the old `pad_size` 1344 x 1344. "after": each batch padded to
one of configs' COCO `pad_sizes` (`config_lib.detection()`, pinned here: the benchmarks import
without ml_collections; tests/detection_benchmarks_test.py keeps them in step), the images
grouped as `detection.buckets.assign_buckets` does at the largest train short side (800, max
1333). Mean FLOPs per step = sum over buckets of (the bucket's share of the images) x (its
step's FLOPs): in the loader each bucket's share of the steps is its share of the images.

COCO's aspect-ratio mix: COCO_SAMPLE, the (height, width) of the 159 images of a public COCO
2017 subset (80 train2017 + 79 val2017 images, github.com/Obmutescence/COCO-MINI), as counts:
landscape 119 (75%; 4:3 like 640 x 480 and 3:2 like 640 x 427 most), portrait 37 (23%),
square 3 (2%). It is a sample, so the mean is an estimate; the per-bucket FLOPs are exact and
reported too, to re-weight with another mix.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SQUARE = (1344, 1344)  # config_lib.detection()'s dataset.pad_size
# config_lib.detection()'s dataset.pad_sizes, short_sides (max 800) and max_size.
PAD_SIZES = ((800, 1088), (800, 1344), (1088, 800), (1344, 800))
SHORT_SIDE, MAX_SIZE = 800, 1333
MAX_GT = 100
# (height, width): count, over the 159 images named in the module docstring.
COCO_SAMPLE = {
    (480, 640): 33, (427, 640): 22, (640, 480): 12, (426, 640): 6, (375, 500): 6,
    (500, 375): 5, (424, 640): 5, (640, 427): 4, (428, 640): 4, (425, 640): 4, (333, 500): 3,
    (640, 478): 3, (399, 640): 2, (433, 640): 2, (579, 640): 1, (474, 640): 1, (383, 640): 1,
    (640, 640): 1, (406, 500): 1, (360, 640): 1, (500, 376): 1, (522, 640): 1, (463, 640): 1,
    (342, 640): 1, (422, 640): 1, (640, 621): 1, (506, 640): 1, (382, 640): 1, (400, 640): 1,
    (393, 640): 1, (361, 640): 1, (640, 479): 1, (640, 414): 1, (500, 500): 1, (478, 640): 1,
    (377, 500): 1, (500, 333): 1, (612, 612): 1, (358, 640): 1, (640, 457): 1, (423, 640): 1,
    (457, 640): 1, (640, 424): 1, (640, 428): 1, (640, 474): 1, (640, 470): 1, (334, 500): 1,
    (304, 640): 1, (464, 640): 1, (559, 640): 1, (414, 640): 1, (640, 383): 1, (406, 640): 1,
    (313, 640): 1, (408, 640): 1, (374, 500): 1, (640, 358): 1, (461, 640): 1, (400, 500): 1,
    (484, 640): 1, (640, 426): 1, (476, 640): 1,
}  # fmt: skip


def bucket_shares(pad_sizes=PAD_SIZES, sample=COCO_SAMPLE) -> list[float]:
    """Each pad size's share of the sample's images (`buckets.assign_buckets`)."""
    import numpy as np

    from luminet_jax.detection import buckets

    sizes = np.array([hw for hw, n in sample.items() for _ in range(n)])
    of = buckets.assign_buckets(sizes, pad_sizes, short_side=SHORT_SIDE, max_size=MAX_SIZE)
    return (np.bincount(of, minlength=len(pad_sizes)) / len(of)).tolist()


def step_flops(batch: int, pad_sizes, *, compile_: bool = False) -> list[dict]:
    """[{"pad_size", "flops", "seconds"}] of the R-18-FPN train step at each pad size."""
    import jax
    import jax.numpy as jnp

    from luminet_jax import optim
    from luminet_jax import state as state_lib
    from luminet_jax.detection import rcnn
    from luminet_jax.detection import steps as det_steps

    model = rcnn.get_detector("faster_rcnn_r18_fpn", num_classes=80)
    tx = optim.make_optimizer(learning_rate=0.01, momentum=0.9, weight_decay=1e-4)
    state = jax.eval_shape(
        lambda v: state_lib.create_train_state(
            {"params": v["params"], "batch_stats": v["frozen"]}, tx
        ),
        rcnn.abstract_variables(model),
    )
    step = jax.jit(det_steps.make_train_step(model, tx))
    spec = jax.ShapeDtypeStruct
    rows = []
    for height, width in pad_sizes:
        batch_spec = {
            "image": spec((batch, height, width, 3), jnp.float32),
            "boxes": spec((batch, MAX_GT, 4), jnp.float32),
            "classes": spec((batch, MAX_GT), jnp.int32),
            "gt_mask": spec((batch, MAX_GT), jnp.bool_),
            "image_size": spec((batch, 2), jnp.int32),
            "index": spec((batch,), jnp.int32),
        }
        start = time.perf_counter()
        lowered = step.lower(state, None, batch_spec)
        cost = lowered.compile().cost_analysis() if compile_ else lowered.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        rows.append(
            {
                "pad_size": [height, width],
                "flops": float(cost["flops"]),
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="images per step (COCO: 8)")
    parser.add_argument("--compile", action="store_true", help="cost after XLA optimization")
    parser.add_argument("--out", default="", help="write the results as JSON here")
    args = parser.parse_args(argv)
    shares = bucket_shares()
    rows = step_flops(args.batch, [SQUARE, *PAD_SIZES], compile_=args.compile)
    before = rows[0]["flops"]
    after = sum(share * row["flops"] for share, row in zip(shares, rows[1:]))
    result = {
        "batch": args.batch,
        "analysis": "compiled" if args.compile else "lowered",
        "square": rows[0],
        "buckets": [dict(row, share=round(s, 4)) for s, row in zip(shares, rows[1:])],
        "flops_before": before,
        "flops_after_mean": after,
        "ratio": round(before / after, 3),
    }
    print(json.dumps({k: result[k] for k in ("flops_before", "flops_after_mean", "ratio")}))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
