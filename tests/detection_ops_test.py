"""Detection ops and anchors against independent NumPy references (loops), float64.

The references restate torchvision's `nms` / `roi_align` and detectron2's box coder and
anchor generator rules point by point (DESIGN.md section 7), so the vectorised JAX ops are
checked at relative 1e-6 or tighter.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from luminet_jax import sharding
from luminet_jax.detection import anchors, ops

RTOL = 1e-6

# Jitted once per static configuration: far fewer dispatches than eager op-by-op.
nms = jax.jit(ops.nms, static_argnames=("max_outputs",))  # the threshold is traced
roi_align = jax.jit(
    ops.roi_align, static_argnames=("output_size", "spatial_scale", "sampling_ratio", "aligned")
)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------- NumPy references


def ref_iou(a, b):
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = max(0.0, min(p[2], q[2]) - max(p[0], q[0]))
            ih = max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            inter = iw * ih
            if inter > 0:
                union = (p[2] - p[0]) * (p[3] - p[1]) + (q[2] - q[0]) * (q[3] - q[1]) - inter
                out[i, j] = inter / union
    return out


def ref_nms(boxes, scores, thr, valid=None):
    idx = [i for i in range(len(boxes)) if valid is None or valid[i]]
    order = sorted(idx, key=lambda i: -scores[i])  # Python's sort is stable.
    keep, removed = [], set()
    for i in order:
        if i in removed:
            continue
        keep.append(i)
        for j in order:
            if j not in removed and j not in keep and ref_iou([boxes[i]], [boxes[j]])[0, 0] > thr:
                removed.add(j)
    return keep


def serial_nms(boxes, scores, *, iou_threshold, max_outputs, mask=None):
    """The serial greedy NMS that `ops.nms` replaced (one box kept per loop step, up to
    `max_outputs` steps): the reference for large random cases, where `ref_nms` is slow."""
    n = boxes.shape[0]
    order = jnp.argsort(-scores, stable=True)
    sorted_boxes = boxes[order]
    alive = jnp.ones((n,), bool) if mask is None else mask.astype(bool)[order]

    def body(k, carry):
        alive, indices, count = carry
        pos = jnp.argmax(alive)  # First alive box in sorted order = next kept box.
        any_alive = alive[pos]
        suppress = ops.box_iou(sorted_boxes[pos][None], sorted_boxes)[0] > iou_threshold
        suppress = suppress | (jnp.arange(n) == pos)
        alive = jnp.where(any_alive, alive & ~suppress, alive)
        indices = indices.at[k].set(jnp.where(any_alive, order[pos], -1).astype(jnp.int32))
        return alive, indices, count + any_alive.astype(jnp.int32)

    init = (alive, jnp.full((max_outputs,), -1, jnp.int32), jnp.zeros((), jnp.int32))
    _, indices, count = jax.lax.fori_loop(0, max_outputs, body, init)
    return indices, count


serial_nms_jit = jax.jit(serial_nms, static_argnames=("max_outputs",))


def ref_point_weights(y, x, h, w):
    """[(row, col, weight)] of one sample point, torchvision's bilinear rules."""
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return [(y0, x0, hy * hx), (y0, x1, hy * lx), (y1, x0, ly * hx), (y1, x1, ly * lx)]


def ref_roi_align_matrix(box, h, w, out, scale, ratio, aligned):
    """(out * out, h * w) matrix M with pooled = M @ features.reshape(h * w, C)."""
    off = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (c * scale - off for c in box)
    rw, rh = x2 - x1, y2 - y1
    if not aligned:
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / out, rw / out
    m = np.zeros((out * out, h * w))
    for ph in range(out):
        for pw in range(out):
            for iy in range(ratio):
                y = y1 + ph * bh + (iy + 0.5) * bh / ratio
                for ix in range(ratio):
                    x = x1 + pw * bw + (ix + 0.5) * bw / ratio
                    for r, c, wt in ref_point_weights(y, x, h, w):
                        m[ph * out + pw, r * w + c] += wt / (ratio * ratio)
    return m


def ref_roi_align(feats, boxes, out, scale, ratio, aligned):
    b, h, w, c = feats.shape
    res = np.zeros((b, boxes.shape[1], out, out, c))
    for i in range(b):
        for r in range(boxes.shape[1]):
            m = ref_roi_align_matrix(boxes[i, r], h, w, out, scale, ratio, aligned)
            res[i, r] = (m @ feats[i].reshape(h * w, c)).reshape(out, out, c)
    return res


def random_boxes(rng, n, lo=0.0, hi=50.0, min_size=1.0, max_size=30.0):
    xy = rng.uniform(lo, hi, (n, 2))
    wh = rng.uniform(min_size, max_size, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


# ---------------------------------------------------------------- IoU


@pytest.mark.integration  # heavy: the second tier
def test_box_iou_matches_reference_incl_disjoint_touching_and_zero_area():
    rng = np.random.default_rng(0)
    a = random_boxes(rng, 9)
    b = np.concatenate(
        [
            random_boxes(rng, 7),
            [[0, 0, 0, 0], [5, 5, 5, 9], [100, 100, 110, 110]],  # zero area, disjoint
            [[a[0, 2], a[0, 1], a[0, 2] + 4, a[0, 3]]],  # touching edge: IoU 0
            [a[1]],  # identical: IoU 1
        ]
    )
    got = np.asarray(ops.box_iou(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(got, ref_iou(a, b), rtol=RTOL, atol=0)
    assert got[1, -1] == 1.0 and got[0, -2] == 0.0
    assert np.isfinite(np.asarray(ops.box_iou(jnp.zeros((2, 4)), jnp.zeros((3, 4))))).all()


# ---------------------------------------------------------------- NMS


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_exact_kept_set_and_order(seed, thr):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 60, hi=40.0, min_size=5.0, max_size=25.0)
    scores = np.round(rng.uniform(0, 1, 60), 1)  # Many exact ties in score.
    want = ref_nms(boxes, scores, thr)
    idx, count = nms(jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=thr, max_outputs=60)
    assert int(count) == len(want)
    assert np.asarray(idx).tolist() == want + [-1] * (60 - len(want))


def test_nms_threshold_equality_keeps_and_ties_break_by_index():
    # IoU(b0, b1) = 50 / 150 = 1/3 exactly at a dyadic-friendly threshold; b2 duplicates b0.
    boxes = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 10], [20, 20, 30, 30.0]])
    iou01 = ref_iou(boxes[:1], boxes[1:2])[0, 0]
    scores = np.array([0.9, 0.9, 0.9, 0.9])
    idx, count = nms(jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=iou01, max_outputs=4)
    # Equal IoU is not suppressed; the tie order is 0, 1, 2, 3; 2 is a copy of 0 (IoU 1).
    assert np.asarray(idx).tolist() == [0, 1, 3, -1] and int(count) == 3
    idx, _ = nms(
        jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=np.nextafter(iou01, 0), max_outputs=4
    )
    assert np.asarray(idx).tolist() == [0, 3, -1, -1]


def test_nms_truncates_to_max_outputs_and_masks_invalid():
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 40, hi=60.0)
    scores = rng.uniform(0, 1, 40)
    valid = rng.uniform(0, 1, 40) < 0.6
    want = ref_nms(boxes, scores, 0.5, valid)
    idx, count = nms(
        jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=0.5, max_outputs=5, mask=valid
    )
    assert np.asarray(idx).tolist() == want[:5] and int(count) == min(5, len(want))
    idx, count = nms(
        jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=0.5, max_outputs=40, mask=valid
    )
    assert np.asarray(idx)[: len(want)].tolist() == want and int(count) == len(want)
    assert all(valid[i] for i in want)
    idx, count = nms(
        jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=0.5, max_outputs=3,
        mask=np.zeros(40, bool),
    )  # fmt: skip
    assert np.asarray(idx).tolist() == [-1, -1, -1] and int(count) == 0


def test_batched_nms_equals_nms_per_class():
    rng = np.random.default_rng(4)
    boxes = random_boxes(rng, 50, hi=30.0, min_size=5.0)
    scores = rng.uniform(0, 1, 50)
    classes = rng.integers(0, 3, 50)
    valid = rng.uniform(0, 1, 50) < 0.8
    kept = []
    for k in range(3):
        sel = [i for i in range(50) if classes[i] == k and valid[i]]
        kept += [sel[j] for j in ref_nms(boxes[sel], scores[sel], 0.5)]
    want = sorted(kept, key=lambda i: -scores[i])  # torchvision returns keep in score order
    idx, count = ops.batched_nms(
        jnp.asarray(boxes), jnp.asarray(scores), jnp.asarray(classes),
        iou_threshold=0.5, max_outputs=50, mask=valid,
    )  # fmt: skip
    assert np.asarray(idx)[: int(count)].tolist() == want


def clustered_boxes(rng, n, clusters, dtype):
    """n boxes jittered around a few centres: long suppression chains, many blocks."""
    centres = random_boxes(rng, clusters, hi=200.0, min_size=10.0, max_size=60.0)
    boxes = centres[rng.integers(0, clusters, n)] + rng.normal(0, 4.0, (n, 4))
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 0.5)
    return boxes.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize(
    "n, block, max_outputs, thr",
    [(1500, 256, 1000, 0.7), (1500, 64, 300, 0.5), (700, 7, 700, 0.3), (300, 512, 40, 0.6)],
)
def test_blocked_nms_equals_the_serial_greedy_on_random_boxes(dtype, n, block, max_outputs, thr):
    rng = np.random.default_rng(n + block)
    boxes = clustered_boxes(rng, n, clusters=max(2, n // 40), dtype=dtype)
    scores = np.round(rng.uniform(0, 1, n), 2).astype(dtype)  # ties across blocks
    valid = rng.uniform(0, 1, n) < 0.9
    blocked = jax.jit(ops.nms, static_argnames=("max_outputs", "block_size"))
    for mask in (None, valid):
        args = (jnp.asarray(boxes), jnp.asarray(scores))
        want = serial_nms_jit(*args, iou_threshold=thr, max_outputs=max_outputs, mask=mask)
        got = blocked(
            *args, iou_threshold=thr, max_outputs=max_outputs, mask=mask, block_size=block
        )
        np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
        assert int(got[1]) == int(want[1]) > 0


def test_blocked_nms_identical_boxes_across_blocks_and_early_stop():
    # 50 copies of one box then 50 disjoint boxes, blocks of 8: one kept per cluster.
    same = np.tile([[0.0, 0.0, 10.0, 10.0]], (50, 1))
    disjoint = np.array([[20.0 * k, 100.0, 20.0 * k + 10, 110.0] for k in range(50)])
    boxes = np.concatenate([same, disjoint])
    scores = np.concatenate([np.full(50, 0.9), np.linspace(0.8, 0.1, 50)])
    idx, count = ops.nms(
        jnp.asarray(boxes), jnp.asarray(scores), iou_threshold=0.5, max_outputs=20, block_size=8
    )
    assert np.asarray(idx).tolist() == [0] + list(range(50, 69)) and int(count) == 20


def test_nms_under_vmap_and_shard_map_equals_per_image():
    # The RPN's use: vmapped over a shard's images inside the sharded train step.
    rng = np.random.default_rng(7)
    boxes = np.stack([clustered_boxes(rng, 300, 8, np.float32) for _ in range(8)])
    scores = rng.uniform(0, 1, (8, 300)).astype(np.float32)
    one = lambda b, s: ops.nms(b, s, iou_threshold=0.6, max_outputs=100, block_size=64)  # noqa: E731
    mesh = sharding.make_mesh()
    spec = jax.sharding.PartitionSpec(sharding.DATA_AXIS)
    sharded = jax.jit(
        jax.shard_map(jax.vmap(one), mesh=mesh, in_specs=(spec, spec), out_specs=spec)
    )
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh))  # noqa: E731
    idx, count = sharded(put(boxes), put(scores))
    for i in range(8):
        want = serial_nms_jit(
            jnp.asarray(boxes[i]), jnp.asarray(scores[i]), iou_threshold=0.6, max_outputs=100
        )
        np.testing.assert_array_equal(np.asarray(idx[i]), np.asarray(want[0]))
        assert int(count[i]) == int(want[1])


# ---------------------------------------------------------------- RoIAlign


def roi_cases():
    h, w = 7, 9
    boxes = np.array(
        [
            [
                [4.0, 2.0, 20.0, 12.0],  # inside
                [-6.0, -5.0, 8.0, 6.0],  # partly outside (top-left)
                [30.0, 20.0, 44.0, 40.0],  # partly outside (bottom-right)
                [10.0, 10.0, 10.3, 10.2],  # tiny
                [3.0, 3.0, 3.0, 3.0],  # zero size
                [-30.0, -30.0, -10.0, -12.0],  # entirely outside: zeros
                [-3.0, -3.0, 2 * w + 3.0, 2 * h + 3.0],  # covering and beyond
            ],
            [
                [1.0, 1.0, 17.0, 13.0],
                [2 * w - 1.0, 2 * h - 1.0, 2 * w + 1.0, 2 * h + 1.0],  # at y = H boundary
                [-3.0, -3.0, -1.0, -1.0],  # samples at y, x = -1 (scale 0.5, unaligned)
                [0.0, 0.0, 1.0, 30.0],
                [5.0, 0.5, 6.5, 1.0],
                [12.0, 4.0, 16.0, 13.5],
                [0.2, 0.3, 0.4, 0.5],
            ],
        ]
    )
    feats = np.random.default_rng(5).normal(size=(2, h, w, 3))
    return feats, boxes


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("out,ratio,scale", [(3, 2, 0.5), (2, 1, 0.5), (4, 3, 0.25), (7, 2, 1.0)])
@pytest.mark.integration  # heavy: the second tier
def test_roi_align_matches_reference(aligned, out, ratio, scale):
    feats, boxes = roi_cases()
    got = roi_align(
        jnp.asarray(feats), jnp.asarray(boxes),
        output_size=out, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned,
    )  # fmt: skip
    want = ref_roi_align(feats, boxes, out, scale, ratio, aligned)
    assert got.shape == (2, 7, out, out, 3) and got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-12)
    assert np.all(want[0, 5] == 0)  # the RoI outside the map pools zeros


def test_roi_align_edge_samples_exactly_on_bounds():
    h, w = 4, 5
    feats = np.arange(h * w, dtype=np.float64).reshape(1, h, w, 1)
    # Unaligned, one sample at the box centre: y = H (kept, reads row H-1), y = H + 0.25
    # (dropped), y = -1 (kept, reads row 0), y = -1.25 (dropped); x likewise inside.
    boxes = np.array(
        [
            [
                [1.5, h - 0.5, 2.5, h + 0.5],
                [1.5, h - 0.25, 2.5, h + 0.75],
                [1.5, -1.5, 2.5, -0.5],
                [1.5, -1.75, 2.5, -0.75],
                [w - 0.5, 0.5, w + 0.5, 1.5],  # x = W: column W-1
            ]
        ]
    )
    got = roi_align(
        jnp.asarray(feats), jnp.asarray(boxes),
        output_size=1, spatial_scale=1.0, sampling_ratio=1, aligned=False,
    )  # fmt: skip
    got = np.asarray(got)[0, :, 0, 0, 0]
    np.testing.assert_allclose(got, [(h - 1) * w + 2, 0.0, 2.0, 0.0, 1 * w + (w - 1)], rtol=0)
    want = ref_roi_align(feats, boxes, 1, 1.0, 1, False)[0, :, 0, 0, 0]
    np.testing.assert_allclose(got, want, rtol=0)


@pytest.mark.parametrize("aligned", [True, False])
def test_roi_align_gradient_wrt_features_is_transposed_weights(aligned):
    feats, boxes = roi_cases()
    out, ratio, scale = 3, 2, 0.5
    g = np.random.default_rng(6).normal(size=(2, 7, out, out, 3))

    def loss(f):
        pooled = ops.roi_align(
            f, jnp.asarray(boxes),
            output_size=out, spatial_scale=scale, sampling_ratio=ratio, aligned=aligned,
        )  # fmt: skip
        return jnp.sum(pooled * g)

    got = np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(feats)))
    want = np.zeros_like(feats)
    b, h, w, c = feats.shape
    for i in range(b):
        for r in range(boxes.shape[1]):
            m = ref_roi_align_matrix(boxes[i, r], h, w, out, scale, ratio, aligned)
            want[i] += (m.T @ g[i, r].reshape(out * out, c)).reshape(h, w, c)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-12)


def test_roi_align_flat_offsets_select_the_map():
    feats, boxes = roi_cases()
    small = feats[:, :4, :5] * 3.0
    b, c = 2, 3
    flat = np.concatenate([feats.reshape(b, -1, c), small.reshape(b, -1, c)], axis=1)
    pick = np.array([[0, 1, 0, 1, 1, 0, 1], [1, 1, 0, 0, 1, 0, 1]])
    got = jax.jit(ops.roi_align_flat, static_argnames=("output_size",))(
        jnp.asarray(flat), jnp.asarray(boxes),
        heights=jnp.asarray(np.where(pick, 4, 7)), widths=jnp.asarray(np.where(pick, 5, 9)),
        offsets=jnp.asarray(np.where(pick, 63, 0)),
        spatial_scales=jnp.asarray(np.where(pick, 0.25, 0.5)), output_size=2,
    )  # fmt: skip
    big = ref_roi_align(feats, boxes, 2, 0.5, 2, True)
    little = ref_roi_align(small, boxes, 2, 0.25, 2, True)
    want = np.where(pick[..., None, None, None], little, big)
    np.testing.assert_allclose(np.asarray(got), want, rtol=RTOL, atol=1e-12)


# ---------------------------------------------------------------- box coding

WEIGHTS = (10.0, 10.0, 5.0, 5.0)


def ref_encode(gt, an, weights):
    out = []
    for g, a in zip(gt, an):
        aw, ah = a[2] - a[0], a[3] - a[1]
        gw, gh = g[2] - g[0], g[3] - g[1]
        ax, ay, gx, gy = a[0] + aw / 2, a[1] + ah / 2, g[0] + gw / 2, g[1] + gh / 2
        out.append(
            [
                weights[0] * (gx - ax) / aw,
                weights[1] * (gy - ay) / ah,
                weights[2] * math.log(gw / aw),
                weights[3] * math.log(gh / ah),
            ]
        )
    return np.array(out)


def ref_decode(d, an, weights):
    out = []
    for t, a in zip(d, an):
        aw, ah = a[2] - a[0], a[3] - a[1]
        cx = t[0] / weights[0] * aw + a[0] + aw / 2
        cy = t[1] / weights[1] * ah + a[1] + ah / 2
        pw = math.exp(min(t[2] / weights[2], math.log(1000 / 16))) * aw
        ph = math.exp(min(t[3] / weights[3], math.log(1000 / 16))) * ah
        out.append([cx - pw / 2, cy - ph / 2, cx + pw / 2, cy + ph / 2])
    return np.array(out)


@pytest.mark.parametrize("weights", [WEIGHTS, (1.0, 1.0, 1.0, 1.0)])
def test_encode_decode_match_reference_and_round_trip(weights):
    rng = np.random.default_rng(7)
    gt, an = random_boxes(rng, 20), random_boxes(rng, 20)
    deltas = ops.encode_boxes(jnp.asarray(gt), jnp.asarray(an), weights=weights)
    np.testing.assert_allclose(np.asarray(deltas), ref_encode(gt, an, weights), rtol=RTOL)
    back = ops.decode_boxes(deltas, jnp.asarray(an), weights=weights)
    np.testing.assert_allclose(np.asarray(back), gt, rtol=1e-12, atol=1e-10)
    d = rng.normal(size=(20, 4)) * 3
    got = ops.decode_boxes(jnp.asarray(d), jnp.asarray(an), weights=weights)
    np.testing.assert_allclose(np.asarray(got), ref_decode(d, an, weights), rtol=RTOL)


def test_decode_clamps_scale_and_broadcasts_class_specific_deltas():
    an = np.array([[0.0, 0.0, 16.0, 8.0]])
    d = np.array([[0.0, 0.0, 100.0, -3.0]])  # dw clamped at log(1000/16); dh not clamped
    got = np.asarray(ops.decode_boxes(jnp.asarray(d), jnp.asarray(an), weights=(1, 1, 1, 1)))
    np.testing.assert_allclose(got[0, 2] - got[0, 0], 1000.0, rtol=1e-12)
    np.testing.assert_allclose(got[0, 3] - got[0, 1], 8.0 * math.exp(-3.0), rtol=1e-12)
    rng = np.random.default_rng(8)
    an = random_boxes(rng, 5)
    d = rng.normal(size=(5, 3, 4))
    got = ops.decode_boxes(jnp.asarray(d), jnp.asarray(an)[:, None], weights=WEIGHTS)
    for k in range(3):
        np.testing.assert_allclose(
            np.asarray(got[:, k]), ref_decode(d[:, k], an, WEIGHTS), rtol=RTOL
        )


def test_clip_boxes_per_image():
    boxes = jnp.asarray([[[-5.0, -1.0, 50.0, 30.0]], [[3.0, 4.0, 5.0, 99.0]]])
    got = ops.clip_boxes(boxes, jnp.asarray([[20.0], [40.0]]), jnp.asarray([[32.0], [10.0]]))
    np.testing.assert_array_equal(np.asarray(got), [[[0, 0, 32, 20]], [[3, 4, 5, 40]]])


# ---------------------------------------------------------------- anchors


def test_anchors_hand_computed_tiny_map():
    s = math.sqrt(2.0)
    level = anchors.fpn_anchors([(2, 3)], strides=[4], sizes=[32])[0]
    assert level.shape == (2 * 3 * 3, 4)
    cells = np.array(
        [
            [-16 * s, -8 * s, 16 * s, 8 * s],  # ratio 0.5: w = sqrt(1024 / 0.5), h = w / 2
            [-16, -16, 16, 16],
            [-8 * s, -16 * s, 8 * s, 16 * s],
        ]
    )
    np.testing.assert_allclose(level[:3], cells, rtol=1e-15)
    # location (y=1, x=2) is anchors 15..17, shifted by (x, y) = (8, 4)
    np.testing.assert_allclose(level[15:18], cells + [8, 4, 8, 4], rtol=1e-15)
    np.testing.assert_allclose(level[3:6], cells + [4, 0, 4, 0], rtol=1e-15)
    for y in range(2):
        for x in range(3):
            for a in range(3):
                np.testing.assert_allclose(
                    level[(y * 3 + x) * 3 + a], cells[a] + 4 * np.array([x, y, x, y])
                )


def test_fpn_anchors_levels_sizes_and_areas():
    grids = [(8, 8), (4, 4), (2, 2), (1, 2), (1, 2)]
    levels = anchors.fpn_anchors(grids)
    assert [lv.shape[0] for lv in levels] == [192, 48, 12, 6, 6]
    for lv, size, stride in zip(levels, anchors.FPN_SIZES, anchors.FPN_STRIDES):
        np.testing.assert_allclose(ops.box_area(lv), size**2, rtol=1e-12)
        w, h = lv[:3, 2] - lv[:3, 0], lv[:3, 3] - lv[:3, 1]
        np.testing.assert_allclose(h / w, anchors.ASPECT_RATIOS, rtol=1e-12)
        np.testing.assert_allclose(lv[3] - lv[0], [stride, 0, stride, 0], atol=1e-12)


# ---------------------------------------------------------------- jit


def test_ops_jit_with_static_shapes():
    rng = np.random.default_rng(9)
    boxes_np, scores_np = random_boxes(rng, 30), rng.uniform(0, 1, 30)
    boxes, scores = jnp.asarray(boxes_np), jnp.asarray(scores_np)
    f = jax.jit(lambda b, s: ops.nms(b, s, iou_threshold=0.5, max_outputs=10))
    idx, count = f(boxes, scores)
    want = ref_nms(boxes_np, scores_np, 0.5)[:10]
    assert idx.shape == (10,) and idx.dtype == jnp.int32 and int(count) == len(want)
    assert np.asarray(idx)[: len(want)].tolist() == want
    feats, rois = roi_cases()
    ra = jax.jit(lambda f, b: ops.roi_align(f, b, output_size=2, spatial_scale=0.5))
    want = ref_roi_align(feats, rois, 2, 0.5, 2, True)
    np.testing.assert_allclose(ra(feats, rois), want, rtol=RTOL, atol=1e-12)
    iou = jax.jit(ops.box_iou)(boxes, boxes)
    np.testing.assert_allclose(iou, ref_iou(boxes_np, boxes_np), rtol=RTOL)


def test_roi_align_float32_and_bfloat16_features_keep_pixel_accurate_coordinates():
    feats, boxes = roi_cases()
    feats = feats.repeat(8, axis=1).repeat(8, axis=2)  # 56 x 72: coordinates need > 8 bits
    boxes = boxes * 8
    want = ref_roi_align(feats, boxes, 3, 0.5, 2, True)
    with jax.enable_x64(False):
        f32 = roi_align(jnp.asarray(feats, jnp.float32), jnp.asarray(boxes, jnp.float32),
                        output_size=3, spatial_scale=0.5)  # fmt: skip
        bf16 = roi_align(jnp.asarray(feats, jnp.bfloat16), jnp.asarray(boxes, jnp.float32),
                         output_size=3, spatial_scale=0.5)  # fmt: skip
    assert f32.dtype == jnp.float32 and bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(f32), want, rtol=1e-5, atol=1e-5)
    # bf16 inputs/outputs round to 8 bits (|x| <= ~4 here); the coordinates stay exact.
    np.testing.assert_allclose(np.asarray(bf16, np.float32), want, rtol=0, atol=0.05)


def test_roi_align_reproduces_detectron2_published_values():
    # detectron2 tests/layers/test_roi_align.py (test_forward_output): a 5x5 ramp, box
    # (1, 1, 3, 3), 4x4 output; its adaptive ratio there is ceil(2 / 4) = 1.
    feats = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
    box = np.array([[[1.0, 1.0, 3.0, 3.0]]])
    unaligned = [[7.5, 8, 8.5, 9], [10, 10.5, 11, 11.5], [12.5, 13, 13.5, 14], [15, 15.5, 16, 16.5]]
    aligned = [[4.5, 5, 5.5, 6], [7, 7.5, 8, 8.5], [9.5, 10, 10.5, 11], [12, 12.5, 13, 13.5]]
    for flag, want in ((False, unaligned), (True, aligned)):
        got = roi_align(
            feats, box, output_size=4, spatial_scale=1.0, sampling_ratio=1, aligned=flag
        )
        np.testing.assert_allclose(np.asarray(got)[0, 0, :, :, 0], want, rtol=1e-12)


def test_anchors_reproduce_detectron2_published_values():
    # detectron2 tests/modeling/test_anchor_generator.py: sizes (32, 64), ratios
    # (0.25, 1, 4), stride 4, a 1 x 2 map, offset 0.0.
    got = anchors.grid_anchors((1, 2), 4, anchors.cell_anchors([32, 64], [0.25, 1, 4]))
    first = [[-32, -8, 32, 8], [-16, -16, 16, 16], [-8, -32, 8, 32]]
    first += [[-64, -16, 64, 16], [-32, -32, 32, 32], [-16, -64, 16, 64]]
    want = np.array(first + [[x1 + 4, y1, x2 + 4, y2] for x1, y1, x2, y2 in first], float)
    np.testing.assert_allclose(got, want, rtol=1e-12)
