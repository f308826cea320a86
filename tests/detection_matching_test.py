"""Matching, sampling, RPN/RoI targets and FPN pooling: references, counts, invariances.

The Matcher is checked against a loop restatement of detectron2's rules; sampling by its
counts (detectron2's `subsample_labels`), fractions, determinism from the key and
independence from the sharding of the batch; padded ground truth must change nothing.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from luminet_jax import sharding
from luminet_jax.detection import anchors, matching, ops, poolers


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def ref_match(q, thresholds, labels, allow_low, gt_valid):
    g_count, n_count = q.shape
    valid_gt = [g for g in range(g_count) if gt_valid[g]]
    if not valid_gt:
        return [0] * n_count, [labels[0]] * n_count
    bounds = [-math.inf, *thresholds, math.inf]
    matches, out = [], []
    for n in range(n_count):
        best = valid_gt[0]
        for g in valid_gt:
            if q[g, n] > q[best, n]:
                best = g
        matches.append(best)
        for label, lo, hi in zip(labels, bounds[:-1], bounds[1:]):
            if lo <= q[best, n] < hi:
                out.append(label)
    if allow_low:
        for g in valid_gt:
            top = max(q[g])
            for n in range(n_count):
                if q[g, n] == top:
                    out[n] = 1
    return matches, out


def random_boxes(rng, n, hi=60.0, min_size=4.0, max_size=40.0):
    xy = rng.uniform(0, hi, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(min_size, max_size, (n, 2))], axis=1)


@pytest.mark.parametrize("allow_low", [True, False])
def test_match_matches_reference_with_exact_thresholds_and_padding(allow_low):
    rng = np.random.default_rng(0)
    q = np.round(rng.uniform(0, 0.9, (6, 50)), 1)  # many exact 0.3 / 0.7 values and ties
    gt_valid = np.array([1, 0, 1, 1, 0, 1], bool)
    q[1] = 0.95  # padded rows would win everywhere if they were not masked
    m, lab = matching.match(
        jnp.asarray(q), thresholds=(0.3, 0.7), labels=(0, -1, 1),
        allow_low_quality_matches=allow_low, gt_valid=jnp.asarray(gt_valid),
    )  # fmt: skip
    want_m, want_l = ref_match(q, (0.3, 0.7), (0, -1, 1), allow_low, gt_valid)
    assert np.asarray(m).tolist() == want_m and np.asarray(lab).tolist() == want_l
    assert set(want_l) == {-1, 0, 1} and not set(np.asarray(m)) & {1, 4}
    band = (q[gt_valid].max(0) >= 0.3) & (q[gt_valid].max(0) < 0.7)
    assert (np.asarray(lab)[band] != 0).all()  # ignore band (-1) or a low-quality match


def test_match_reproduces_detectron2_published_values():
    # detectron2 tests/modeling/test_matcher.py: RPN thresholds, low-quality matches on.
    q = jnp.asarray([[0.15, 0.45, 0.2, 0.6], [0.3, 0.65, 0.05, 0.1], [0.05, 0.4, 0.25, 0.4]])
    m, lab = matching.match(
        q, thresholds=matching.RPN_IOU_THRESHOLDS, labels=matching.RPN_IOU_LABELS,
        allow_low_quality_matches=True,
    )  # fmt: skip
    assert np.asarray(m).tolist() == [1, 1, 2, 0] and np.asarray(lab).tolist() == [-1, 1, 0, 1]


def test_match_without_valid_ground_truth_is_background():
    q = jnp.full((3, 7), 0.9)
    for g_valid, q_ in ((jnp.zeros(3, bool), q), (jnp.zeros(0, bool), jnp.zeros((0, 7)))):
        m, lab = matching.match(
            q_, thresholds=(0.3, 0.7), labels=(0, -1, 1),
            allow_low_quality_matches=True, gt_valid=g_valid,
        )  # fmt: skip
        assert np.asarray(lab).tolist() == [0] * 7 and np.asarray(m).tolist() == [0] * 7


SUBSAMPLE_256 = jax.jit(
    functools.partial(matching.subsample, num_samples=256, positive_fraction=0.5)
)  # one compile shared by the cases below


@pytest.mark.parametrize("n_pos,n_neg", [(300, 500), (40, 500), (40, 100), (0, 50), (0, 0)])
def test_subsample_counts_fraction_and_membership(n_pos, n_neg):
    n = 1000
    rng = np.random.default_rng(1)
    perm = rng.permutation(n)
    positive = np.zeros(n, bool)
    negative = np.zeros(n, bool)
    positive[perm[:n_pos]] = True
    negative[perm[n_pos : n_pos + n_neg]] = True
    f = SUBSAMPLE_256
    idx, is_pos, valid = (np.asarray(x) for x in f(jax.random.key(0), positive, negative))
    want_pos = min(n_pos, 128)
    want_neg = min(n_neg, 256 - want_pos)
    assert is_pos.sum() == want_pos and valid.sum() == want_pos + want_neg
    assert is_pos[:want_pos].all() and valid[: want_pos + want_neg].all()  # fg first
    assert positive[idx[is_pos]].all() and negative[idx[valid & ~is_pos]].all()
    assert len(set(idx[valid].tolist())) == valid.sum()  # no repeats
    again = f(jax.random.key(0), positive, negative)
    np.testing.assert_array_equal(idx, again[0])  # determinism from the key
    if n_neg > 256:
        other = np.asarray(f(jax.random.key(1), positive, negative)[0])
        assert set(other[valid].tolist()) != set(idx[valid].tolist())


@pytest.mark.integration  # heavy: the second tier
def test_subsample_with_fewer_candidates_than_slots():
    positive = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 1], bool)
    negative = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 0], bool)  # two ignored
    idx, is_pos, valid = matching.subsample(
        jax.random.key(3), positive, negative, num_samples=16, positive_fraction=0.25
    )
    assert np.asarray(is_pos).sum() == 3 and np.asarray(valid).sum() == 8
    assert sorted(np.asarray(idx)[:3].tolist()) == [0, 3, 9]
    assert sorted(np.asarray(idx)[3:8].tolist()) == [1, 2, 5, 6, 7]


def test_subsample_is_uniform_over_candidates():
    n = 40
    positive = np.arange(n) < 10
    f = jax.jit(
        jax.vmap(
            functools.partial(matching.subsample, num_samples=8, positive_fraction=0.25),
            in_axes=(0, None, None),
        )
    )
    idx, is_pos, _ = f(jax.random.split(jax.random.key(2), 2000), positive, ~positive)
    hits = np.bincount(np.asarray(idx)[np.asarray(is_pos)], minlength=n)[:10]
    # 2000 draws x 2 of 10 -> 400 each; binomial sd ~ 18
    assert hits.min() > 320 and hits.max() < 480, hits


def tiny_scene(rng, num_gt=5, pad=3):
    """Anchors of a 64x64 image (p2..p6 grids) and padded gt with padding inserted."""
    grids = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    an = np.concatenate(anchors.fpn_anchors(grids))
    gt = random_boxes(rng, num_gt, hi=40.0, min_size=8.0, max_size=30.0)
    slots = np.sort(rng.permutation(num_gt + pad)[:num_gt])
    padded = np.tile([[10.0, 10.0, 40.0, 40.0]], (num_gt + pad, 1))  # overlaps many anchors
    padded[slots] = gt
    valid = np.zeros(num_gt + pad, bool)
    valid[slots] = True
    return an, gt, padded, valid


@pytest.mark.integration  # heavy: the second tier
def test_rpn_targets_padding_changes_nothing_and_labels_follow_matcher():
    rng = np.random.default_rng(3)
    an, gt, padded, valid = tiny_scene(rng)
    f = jax.jit(matching.rpn_targets, static_argnames=("batch_size_per_image",))
    key = jax.random.key(4)
    lab, matched = (np.asarray(x) for x in f(key, an, padded, valid, batch_size_per_image=64))
    lab0, matched0 = (np.asarray(x) for x in f(key, an, gt, np.ones(len(gt), bool),
                                               batch_size_per_image=64))  # fmt: skip
    np.testing.assert_array_equal(lab, lab0)
    np.testing.assert_array_equal(matched[lab == 1], matched0[lab == 1])
    iou = ref_iou_np(gt, an)
    _, want = ref_match(iou, (0.3, 0.7), (0, -1, 1), True, np.ones(len(gt), bool))
    want = np.asarray(want)
    assert (want[lab == 1] == 1).all() and (want[lab == 0] == 0).all()
    assert (lab == 1).sum() == min((want == 1).sum(), 32)
    assert (lab >= 0).sum() == min((want == 1).sum(), 32) + min((want == 0).sum(), 64 - 32)
    best = iou.argmax(0)
    np.testing.assert_array_equal(matched[lab == 1], gt[best[lab == 1]])
    # An image without valid ground truth: all sampled anchors are negatives, boxes zero.
    lab_e, matched_e = f(key, an, padded, np.zeros_like(valid), batch_size_per_image=64)
    assert (np.asarray(lab_e) == 1).sum() == 0 and (np.asarray(lab_e) == 0).sum() == 64
    assert not np.asarray(matched_e).any()


def ref_iou_np(a, b):
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return np.where(inter > 0, inter / (area(a)[:, None] + area(b)[None] - inter), 0)


@pytest.mark.integration  # heavy: the second tier
def test_roi_targets_sampling_classes_and_appended_gt():
    rng = np.random.default_rng(5)
    _, gt, padded, valid = tiny_scene(rng)
    classes = np.zeros(len(padded), np.int64)
    classes[valid] = rng.integers(0, 4, valid.sum())
    proposals = np.concatenate([random_boxes(rng, 60, hi=50.0), np.zeros((20, 4))])
    prop_valid = np.arange(80) < 60
    f = jax.jit(matching.roi_targets, static_argnames=("num_classes", "batch_size_per_image"))
    out = {k: np.asarray(v) for k, v in f(
        jax.random.key(6), proposals, prop_valid, padded, classes, valid,
        num_classes=4, batch_size_per_image=32,
    ).items()}  # fmt: skip
    fg, ok = out["foreground"], out["valid"]
    all_boxes = np.concatenate([proposals[:60], gt])
    iou = ref_iou_np(gt, all_boxes)
    n_fg = (iou.max(0) >= 0.5).sum()
    n_bg = (iou.max(0) < 0.5).sum()
    assert fg.sum() == min(n_fg, 8) and ok.sum() == min(n_fg, 8) + min(n_bg, 32 - min(n_fg, 8))
    assert fg[: fg.sum()].all() and ok[: ok.sum()].all()
    assert (out["classes"][ok & ~fg] == 4).all()
    gt_classes = classes[valid]
    for box, cls, gbox in zip(out["boxes"][fg], out["classes"][fg], out["gt_boxes"][fg]):
        col = ref_iou_np(gt, box[None])[:, 0]
        assert col.max() >= 0.5 and cls == gt_classes[col.argmax()]
        np.testing.assert_array_equal(gbox, gt[col.argmax()])
    # Sampled boxes come only from the valid proposals and the valid ground truth.
    for box in out["boxes"][ok]:
        assert np.isclose(all_boxes, box).all(axis=1).any()
    # Few candidates: every gt (IoU 1 with itself) is a positive when the quota allows it.
    few = f(
        jax.random.key(7), proposals, np.zeros(80, bool), padded, classes, valid,
        num_classes=4, batch_size_per_image=32,
    )  # fmt: skip
    assert int(few["foreground"].sum()) == len(gt) and int(few["valid"].sum()) == len(gt)
    assert sorted(np.asarray(few["classes"])[: len(gt)].tolist()) == sorted(gt_classes.tolist())
    # No valid gt: all background.
    none = f(
        jax.random.key(7), proposals, prop_valid, padded, classes, np.zeros_like(valid),
        num_classes=4, batch_size_per_image=32,
    )  # fmt: skip
    assert not none["foreground"].any() and int(none["valid"].sum()) == 32
    assert (np.asarray(none["classes"]) == 4).all()


@pytest.mark.integration  # heavy: the second tier
def test_targets_are_independent_of_batch_sharding():
    n_dev = jax.device_count()
    rng = np.random.default_rng(8)
    scenes = [tiny_scene(rng) for _ in range(n_dev)]
    an = scenes[0][0]
    gt = np.stack([s[2] for s in scenes])
    valid = np.stack([s[3] for s in scenes])

    def per_shard(key, gt, valid, axis_name):
        keys = matching.image_keys(key, gt.shape[0], axis_name=axis_name)
        rpn = functools.partial(matching.rpn_targets, batch_size_per_image=32)
        return jax.vmap(rpn, in_axes=(0, None, 0, 0))(keys, an, gt, valid)

    key = jax.random.key(9)
    single = jax.jit(functools.partial(per_shard, axis_name=None))(key, gt, valid)
    mesh = sharding.make_mesh()
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(per_shard, axis_name="data"),
            mesh=mesh, in_specs=(P(), P("data"), P("data")), out_specs=P("data"),
        )
    )(key, gt, valid)  # fmt: skip
    for a, b in zip(single, sharded):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert len({tuple(np.asarray(single[0][i])) for i in range(n_dev)}) == n_dev


def test_assign_boxes_to_levels_matches_reference():
    sides = [1.0, 10.0, 111.9, 112.0, 150.0, 224.0, 447.0, 448.0, 1000.0, 2000.0]
    boxes = np.array([[5.0, 7.0, 5.0 + s, 7.0 + s] for s in sides] + [[3, 3, 3, 9.0]])
    got = np.asarray(poolers.assign_boxes_to_levels(jnp.asarray(boxes)))
    want = []
    for b in boxes:
        size = math.sqrt((b[2] - b[0]) * (b[3] - b[1]))
        level = math.floor(4 + math.log2(size / 224 + 1e-8)) if size > 0 else -math.inf
        want.append(min(max(level, 2), 5))
    assert got.tolist() == want == [2, 2, 2, 3, 3, 4, 4, 5, 5, 5, 2]


@pytest.mark.integration  # heavy: the second tier
def test_multilevel_roi_align_pools_each_roi_from_its_level():
    rng = np.random.default_rng(10)
    feats = [rng.normal(size=(2, 64 // s, 48 // s, 3)) for s in poolers.ROI_STRIDES]
    sides = np.array([[20, 60, 130, 250, 500, 5, 100], [300, 90, 45, 12, 240, 700, 160.0]])
    xy = rng.uniform(-10, 40, (2, 7, 2))
    boxes = np.concatenate([xy, xy + sides[..., None] * [1.0, 0.7]], axis=-1)
    f = jax.jit(lambda fs, b: poolers.multilevel_roi_align(fs, b, output_size=3))
    got = np.asarray(f(feats, boxes))
    levels = np.asarray(poolers.assign_boxes_to_levels(jnp.asarray(boxes)))
    assert set(levels.ravel().tolist()) == {2, 3, 4, 5}
    single = jax.jit(ops.roi_align, static_argnames=("output_size", "spatial_scale"))
    for lv, stride, fmap in zip(range(2, 6), poolers.ROI_STRIDES, feats):
        want = np.asarray(single(fmap, boxes, output_size=3, spatial_scale=1 / stride))
        np.testing.assert_allclose(got[levels == lv], want[levels == lv], rtol=1e-12, atol=1e-14)
