"""Small PyTorch references of the CIFAR ResNets, ResNet50, WRN, VGG and ImageNet ResNet18.

Own code, written from the architecture descriptions (mdistiller's CIFAR ResNet / ResNet50 /
WRN / VGG, torchvision's ResNet18) with PyTorch's attribute names, so that their
state_dicts convert with `models.from_torch`. Each has `forward(x) -> logits`, mdistiller's
feature forward `features(x) -> (logits, {"feats", "preact_feats", "pooled_feat"})` and its
`get_bn_before_relu()`. `_reference(name)` builds one in eval mode with random BatchNorm
affines and running statistics. Used by torch_convert_test.py and models_feats_test.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional


class CifarBasic(tnn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or cin != planes:
            self.downsample = tnn.Sequential(
                tnn.Conv2d(cin, planes, 1, stride, bias=False), tnn.BatchNorm2d(planes)
            )

    def forward_preact(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        preact = out + (x if self.downsample is None else self.downsample(x))
        return F.relu(preact), preact

    def forward(self, x):
        return self.forward_preact(x)[0]


def _stage(layer, x):
    """A Sequential of blocks; returns (output, the last block's pre-activation)."""
    for block in layer[:-1]:
        x = block(x)
    return layer[-1].forward_preact(x)


def _resnet_features(net, stem, num_stages):
    """mdistiller's ResNet feature forward: feats, preact_feats (stem first) and pooled."""
    feats, preacts = [stem], [stem]
    x = stem
    for s in range(1, num_stages + 1):
        x, pre = _stage(getattr(net, f"layer{s}"), x)
        feats.append(x)
        preacts.append(pre)
    return x, {"feats": feats, "preact_feats": preacts}


def _last_bns(net, num_stages, bn):
    return [getattr(getattr(net, f"layer{s}")[-1], bn) for s in range(1, num_stages + 1)]


class CifarResNet(tnn.Module):
    def __init__(self, depth, filters, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = tnn.Conv2d(3, filters[0], 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(filters[0])
        cin = filters[0]
        for s, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2)), 1):
            blocks = []
            for i in range(n):
                blocks.append(CifarBasic(cin, planes, stride if i == 0 else 1))
                cin = planes
            setattr(self, f"layer{s}", tnn.Sequential(*blocks))
        self.fc = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.avg_pool2d(x, 8).flatten(1))

    def features(self, x):
        x, feats = _resnet_features(self, F.relu(self.bn1(self.conv1(x))), 3)
        feats["pooled_feat"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(feats["pooled_feat"]), feats

    def get_bn_before_relu(self):
        return _last_bns(self, 3, "bn2")


class Bottleneck(tnn.Module):
    def __init__(self, cin, planes, stride, shortcut_name):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(4 * planes)
        proj = None
        if stride != 1 or cin != 4 * planes:
            proj = tnn.Sequential(
                tnn.Conv2d(cin, 4 * planes, 1, stride, bias=False), tnn.BatchNorm2d(4 * planes)
            )
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, proj)

    def forward_preact(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        proj = getattr(self, self.shortcut_name)
        preact = out + (x if proj is None else proj(x))
        return F.relu(preact), preact

    def forward(self, x):
        return self.forward_preact(x)[0]


class CifarResNet50(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        cin = 64
        for s, (planes, n, stride) in enumerate(
            zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2)), 1
        ):
            blocks = []
            for i in range(n):
                blocks.append(Bottleneck(cin, planes, stride if i == 0 else 1, "shortcut"))
                cin = 4 * planes
            setattr(self, f"layer{s}", tnn.Sequential(*blocks))
        self.linear = tnn.Linear(2048, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def features(self, x):
        x, feats = _resnet_features(self, F.relu(self.bn1(self.conv1(x))), 4)
        feats["pooled_feat"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(feats["pooled_feat"]), feats

    def get_bn_before_relu(self):
        return _last_bns(self, 4, "bn3")


class ImageNetResNet18(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        cin = 64
        for s, planes in enumerate((64, 128, 256, 512), 1):
            blocks = []
            for i in range(2):
                blocks.append(CifarBasic(cin, planes, 2 if (i == 0 and s > 1) else 1))
                cin = planes
            setattr(self, f"layer{s}", tnn.Sequential(*blocks))
        self.fc = tnn.Linear(512, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def features(self, x):
        # mdistiller's ImageNet ResNet: preact_feats[i] is block output before its ReLU (its
        # preact_feats[0], the stem BN before ReLU, is not compared: see models/resnet.py).
        stem = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x, feats = _resnet_features(self, stem, 4)
        feats["pooled_feat"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(feats["pooled_feat"]), feats

    def get_bn_before_relu(self):
        return _last_bns(self, 4, "bn2")  # all four stages (mdistiller's lists stages 2-4)


class WideBlock(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = tnn.BatchNorm2d(cin)
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        if not self.equal:
            self.convShortcut = tnn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return out + (x if self.equal else self.convShortcut(act))


class WideGroup(tnn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = tnn.Sequential(
            *[WideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(tnn.Module):
    def __init__(self, depth, k, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        self.conv1 = tnn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = WideGroup(n, 16, 16 * k, 1)
        self.block2 = WideGroup(n, 16 * k, 32 * k, 2)
        self.block3 = WideGroup(n, 32 * k, 64 * k, 2)
        self.bn1 = tnn.BatchNorm2d(64 * k)
        self.fc = tnn.Linear(64 * k, num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(F.relu(self.bn1(x)), 8).flatten(1))

    def features(self, x):
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        f2 = self.block2(f1)
        f3 = self.block3(f2)
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn1(f3)), 1).flatten(1)
        # As mdistiller: the next BatchNorm that sees each stage, applied to it.
        preacts = [f0, *(bn(f) for bn, f in zip(self.get_bn_before_relu(), (f1, f2, f3)))]
        return self.fc(pooled), {
            "feats": [f0, f1, f2, f3],
            "preact_feats": preacts,
            "pooled_feat": pooled,
        }

    def get_bn_before_relu(self):
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]


class VGG(tnn.Module):
    def __init__(self, cfg, num_classes):
        super().__init__()
        cin = 3
        for b, widths in enumerate(cfg):
            mods = []
            for w in widths:
                mods += [tnn.Conv2d(cin, w, 3, 1, 1), tnn.BatchNorm2d(w), tnn.ReLU()]
                cin = w
            setattr(self, f"block{b}", tnn.Sequential(*mods[:-1]))  # last ReLU outside
        self.classifier = tnn.Linear(512, num_classes)

    def forward(self, x):
        h = x.shape[2]
        for b in range(5):
            if b == 4 and h == 64:
                x = F.max_pool2d(x, 2, 2)
            x = F.relu(getattr(self, f"block{b}")(x))
            if b < 3:
                x = F.max_pool2d(x, 2, 2)
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))

    def features(self, x):
        h = x.shape[2]
        feats, preacts = [], []
        for b in range(5):
            if b == 4 and h == 64:
                x = F.max_pool2d(x, 2, 2)
            pre = getattr(self, f"block{b}")(x)
            x = F.relu(pre)
            feats.append(x)
            preacts.append(x if b == 0 else pre)  # mdistiller: preact_feats[0] = f0
            if b < 3:
                x = F.max_pool2d(x, 2, 2)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(pooled), {
            "feats": feats,
            "preact_feats": preacts,
            "pooled_feat": pooled,
        }

    def get_bn_before_relu(self):
        return [getattr(self, f"block{b}")[-1] for b in range(1, 5)]


REFERENCES = {
    "resnet20": (lambda nc: CifarResNet(20, (16, 16, 32, 64), nc), 32),
    "resnet8x4": (lambda nc: CifarResNet(8, (32, 64, 128, 256), nc), 32),
    "wrn_16_2": (lambda nc: WideResNet(16, 2, nc), 32),
    "vgg8": (lambda nc: VGG(((64,), (128,), (256,), (512,), (512,)), nc), 32),
    "resnet18": (ImageNetResNet18, 64),
    "resnet50_cifar": (CifarResNet50, 32),
}


def _randomized(module, seed):
    """Randomizes BatchNorm affine and running statistics so eval BN is not the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, tnn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    return module.eval()


def _reference(name, num_classes=10, seed=0):
    build, size = REFERENCES[name]
    torch.manual_seed(seed)
    return _randomized(build(num_classes), seed), size
