"""Compact PyTorch ResNets for the reference step timing: mdistiller's CIFAR ResNets and
torchvision's ImageNet resnet18 / resnet34 layout.

CIFAR: the same networks as `luminet_jax.models` "resnet8x4"/"resnet32x4" (and the x1
family): 3x3 stem, three stages of BasicBlocks with strides 1, 2, 2, a 1x1-conv + BN
projection whenever the stride or width changes, global average pooling and a linear
classifier. ImageNet: torchvision's ResNet with BasicBlocks (7x7 stride-2 stem, BN, ReLU,
3x3 stride-2 max-pool, four stages of widths 64..512 with strides 1, 2, 2, 2, average pool,
linear), written here because torchvision does not always install beside the CPU torch
wheel; its module names are torchvision's, so a torchvision state_dict loads into it.
`features(x)` is mdistiller's feature forward (logits plus "feats", "preact_feats" and
"pooled_feat") for the feature methods' steps (benchmarks/torch_feature_step.py).
Only used by the benchmarks' PyTorch steps; parameter counts match DESIGN.md.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus (projected) shortcut, then ReLU."""

    def __init__(self, inplanes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward_preact(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(output, the sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_preact(x)[0]


class CifarResNet(nn.Module):
    """mdistiller's CIFAR ResNet: depth 6n+2, widths (stem, stage1, stage2, stage3)."""

    def __init__(self, depth: int, num_filters: tuple[int, ...], num_classes: int = 100):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, num_filters[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        inplanes, stages = num_filters[0], []
        for planes, stride in zip(num_filters[1:], (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(inplanes, planes, stride if i == 0 else 1))
                inplanes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(logits, feats): "feats" = [stem, stage1, stage2, stage3] after their ReLU,
        "preact_feats" = [stem, and each stage's last block before its ReLU], "pooled_feat"
        (N, C), as mdistiller's CIFAR ResNet returns them."""
        x = F.relu(self.bn1(self.conv1(x)))
        return _stage_features(x, (self.layer1, self.layer2, self.layer3), self.fc)


def _stage_features(x: torch.Tensor, stages, fc: nn.Module) -> tuple[torch.Tensor, dict]:
    """`features` after the stem `x`: each stage's output and its last block's pre-ReLU."""
    feats, preacts = [x], [x]
    for layer in stages:
        for block in layer[:-1]:
            x = block(x)
        x, preact = layer[-1].forward_preact(x)
        feats.append(x)
        preacts.append(preact)
    pooled = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return fc(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}


class ImageNetResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks: `blocks` per stage, widths 64, 128, 256, 512."""

    def __init__(self, blocks: tuple[int, ...], num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        inplanes = 64
        for i, (n, planes) in enumerate(zip(blocks, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            layer = [BasicBlock(inplanes, planes, stride)]
            layer += [BasicBlock(planes, planes, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = planes
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """(logits, feats) as `CifarResNet.features`, over the four stages."""
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        return _stage_features(self._stem(x), stages, self.fc)


_SMALL = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)
CONFIGS = {
    "resnet8": (8, _SMALL),
    "resnet20": (20, _SMALL),
    "resnet32": (32, _SMALL),
    "resnet56": (56, _SMALL),
    "resnet110": (110, _SMALL),
    "resnet8x4": (8, _WIDE),
    "resnet32x4": (32, _WIDE),
}


IMAGENET = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


def get_model(name: str, num_classes: int = 100) -> nn.Module:
    """A PyTorch ResNet by the project's model name (CONFIGS: CIFAR; IMAGENET: torchvision's)."""
    if name in IMAGENET:
        return ImageNetResNet(IMAGENET[name], num_classes)
    if name not in CONFIGS:
        known = sorted(CONFIGS) + sorted(IMAGENET)
        raise KeyError(f"torch reference model {name!r} not available; known: {known}")
    depth, filters = CONFIGS[name]
    return CifarResNet(depth, filters, num_classes)
