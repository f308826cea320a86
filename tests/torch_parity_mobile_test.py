"""Eval-mode parity of the mobile models and ViTs with small PyTorch references.

The reference modules (torch_refs_mobile.py for the CNNs, below for the ViTs) are our own
code, written from the architecture descriptions (mdistiller's CIFAR ShuffleV1 / ShuffleV2
/ mobile_half and ImageNet MobileNetV1, timm's VisionTransformer) with the PyTorch
attribute names. Their parameter counts are checked
against DESIGN.md's table, which shows they are the right architectures. Random weights and
random BatchNorm / LayerNorm affine parameters and running statistics make the comparison
sensitive to every converted tensor (layout, grouping, channel-shuffle order, mean/var swap).
Conversion goes through the public `models.from_torch`.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from luminet_jax import models

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional

from torch_refs_mobile import MobileHalf, MobileNetV1, ShuffleV1, ShuffleV2  # noqa: E402

ATOL_F32 = 1e-4


# ----------------------------------------------------------------------------------------
# timm-style VisionTransformer (class token, pre-norm blocks, LayerNorm eps 1e-6).


class Attention(tnn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = tnn.Linear(dim, 3 * dim), tnn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(tnn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = tnn.Linear(dim, hidden), tnn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(tnn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn = tnn.LayerNorm(dim, eps=1e-6), Attention(dim, heads)
        self.norm2, self.mlp = tnn.LayerNorm(dim, eps=1e-6), Mlp(dim, 4 * dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(tnn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = tnn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(tnn.Module):
    def __init__(self, num_classes, *, image, patch, dim, depth, heads):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = tnn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = tnn.Parameter(torch.zeros(1, (image // patch) ** 2 + 1, dim))
        self.blocks = tnn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = tnn.LayerNorm(dim, eps=1e-6)
        self.head = tnn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def deit_tiny(num_classes):
    return VisionTransformer(num_classes, image=224, patch=16, dim=192, depth=12, heads=3)


def deit_small(num_classes):
    return VisionTransformer(num_classes, image=224, patch=16, dim=384, depth=12, heads=6)


def vit_compact(num_classes):
    return VisionTransformer(num_classes, image=32, patch=4, dim=128, depth=12, heads=4)


# ----------------------------------------------------------------------------------------

REFERENCES = {
    # name: (constructor, num_classes, expected parameter count)
    "shufflenet_v1": (ShuffleV1, 100, 949_258),
    "shufflenet_v2": (ShuffleV2, 100, 1_355_528),
    "mobilenet_v2": (MobileHalf, 100, 812_836),
    "mobilenet_v1": (MobileNetV1, 1000, 4_231_976),
    "deit_tiny": (deit_tiny, 1000, 5_717_416),
    "deit_small": (deit_small, 1000, 22_050_664),
    "vit_compact": (vit_compact, 100, 2_407_140),
}


def _randomized(name, seed=0):
    """The reference in eval mode with random weights, norm affines and running stats."""
    ctor, num_classes, _ = REFERENCES[name]
    torch.manual_seed(seed)
    net = ctor(num_classes)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, tnn.BatchNorm2d | tnn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
            if isinstance(module, tnn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
            if isinstance(module, VisionTransformer):
                module.cls_token.normal_(0.0, 0.5)
                module.pos_embed.normal_(0.0, 0.5)
    return net.eval(), num_classes


def _compare(name, size, batch=2, dtype=torch.float32):
    net, num_classes = _randomized(name)
    net = net.to(dtype)
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    images = images.to(dtype)
    with torch.no_grad():
        expected = net(images).numpy()
    variables = models.from_torch(name, net.state_dict(), num_classes=num_classes)
    model = models.get_model(name, num_classes=num_classes)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, images.numpy().transpose(0, 2, 3, 1)
    )
    assert logits.dtype == expected.dtype
    logits = np.asarray(logits)
    diff = np.abs(logits - expected).max()
    print(f"{name}: max |logit| {np.abs(expected).max():.3g}, max diff {diff:.3g}")
    return logits, expected


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_parameter_count_matches_design(name):
    ctor, num_classes, expected = REFERENCES[name]
    net = ctor(num_classes)
    assert sum(p.numel() for p in net.parameters()) == expected


@pytest.mark.parametrize(
    "name,size",
    [("shufflenet_v1", 32), ("shufflenet_v2", 32), ("mobilenet_v2", 32), ("vit_compact", 32)],
)
@pytest.mark.integration  # heavy: the second tier
def test_eval_logits_match_reference_float32(name, size):
    logits, expected = _compare(name, size)
    assert np.abs(expected).max() > 0.1  # the comparison is not trivially small
    np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL_F32)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet_v1", "deit_tiny"])
def test_eval_logits_match_reference_float32_imagenet(name):
    logits, expected = _compare(name, 224, batch=1)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(logits, expected, rtol=0, atol=ATOL_F32)


@pytest.mark.parametrize(
    "name",
    # PyTorch's float64 grouped/depthwise convs are slow on CPU, so the CNN case is slow.
    ["vit_compact", pytest.param("shufflenet_v2", marks=pytest.mark.slow)],
)
@pytest.mark.integration  # heavy: the second tier
def test_eval_logits_match_reference_float64(name):
    # In float64 the conversion and the forward pass agree to rounding, not only closely.
    with jax.enable_x64(True):
        logits, expected = _compare(name, 32, dtype=torch.float64)
    assert logits.dtype == np.float64
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-10)
