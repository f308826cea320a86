"""Small PyTorch references of the mobile CNNs: ShuffleV1, ShuffleV2, mobile_half, MobileNetV1.

Own code, written from the architecture descriptions (mdistiller's CIFAR ShuffleV1 /
ShuffleV2 / mobile_half and ImageNet MobileNetV1) with the PyTorch attribute names, so that
their state_dicts convert with `models.from_torch`. Each has `forward(x) -> logits`,
mdistiller's feature forward `features(x) -> (logits, {"feats", "preact_feats",
"pooled_feat"})` and (but ShuffleV2, where mdistiller raises) `get_bn_before_relu()`.
Used by torch_parity_mobile_test.py and models_feats_test.py.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
tnn = torch.nn
F = torch.nn.functional


def _shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _conv(cin, cout, k, stride=1, groups=1):
    return tnn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)


# ----------------------------------------------------------------------------------------
# ShuffleNetV1 (groups 3, out_planes 240/480/960, blocks 4/8/4, 1x1 stem of 24).


class ShuffleV1Unit(tnn.Module):
    def __init__(self, cin, cout, stride, groups):
        super().__init__()
        mid = int(cout / 4)
        self.g1 = 1 if cin == 24 else groups
        self.stride = stride
        self.conv1, self.bn1 = _conv(cin, mid, 1, groups=self.g1), tnn.BatchNorm2d(mid)
        self.conv2, self.bn2 = _conv(mid, mid, 3, stride, groups=mid), tnn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _conv(mid, cout, 1, groups=groups), tnn.BatchNorm2d(cout)

    def forward_preact(self, x):
        y = _shuffle(F.relu(self.bn1(self.conv1(x))), self.g1)
        y = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(y)))))
        pre = torch.cat([y, F.avg_pool2d(x, 3, 2, 1)], 1) if self.stride == 2 else y + x
        return F.relu(pre), pre

    def forward(self, x):
        return self.forward_preact(x)[0]


def _stage(layer, x):
    """A Sequential of units; returns (output, the last unit's pre-activation)."""
    for unit in layer[:-1]:
        x = unit(x)
    return layer[-1].forward_preact(x)


def _three_stage_features(net, stem):
    feats, preacts, x = [stem], [stem], stem
    for layer in (net.layer1, net.layer2, net.layer3):
        x, pre = _stage(layer, x)
        feats.append(x)
        preacts.append(pre)
    return x, {"feats": feats, "preact_feats": preacts}


class ShuffleV1(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), tnn.BatchNorm2d(24)
        cin = 24
        for s, (planes, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), 1):
            units = []
            for i in range(n):
                units.append(ShuffleV1Unit(cin, planes - (cin if i == 0 else 0), 2 - min(i, 1), 3))
                cin = planes
            setattr(self, f"layer{s}", tnn.Sequential(*units))
        self.linear = tnn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))

    def features(self, x):
        x, feats = _three_stage_features(self, F.relu(self.bn1(self.conv1(x))))
        feats["pooled_feat"] = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.linear(feats["pooled_feat"]), feats

    def get_bn_before_relu(self):
        # mdistiller's ShuffleV1 raises NotImplementedError; the last unit adds x to bn3.
        return [layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3)]


# ----------------------------------------------------------------------------------------
# ShuffleNetV2 (net_size 1: 116/232/464 + 1x1 conv to 1024, blocks 3/7/3, 1x1 stem of 24).


class ShuffleV2Basic(tnn.Module):
    def __init__(self, channels):
        super().__init__()
        c = channels // 2
        self.conv1, self.bn1 = _conv(c, c, 1), tnn.BatchNorm2d(c)
        self.conv2, self.bn2 = _conv(c, c, 3, groups=c), tnn.BatchNorm2d(c)
        self.conv3, self.bn3 = _conv(c, c, 1), tnn.BatchNorm2d(c)

    def forward_preact(self, x):
        c = x.shape[1] // 2
        a, b = x[:, :c], x[:, c:]
        b = self.bn3(self.conv3(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(b)))))))
        # mdistiller's preact: cat([x1, bn3(.)]) before the ReLU and before the shuffle.
        return _shuffle(torch.cat([a, F.relu(b)], 1), 2), torch.cat([a, b], 1)

    def forward(self, x):
        return self.forward_preact(x)[0]


class ShuffleV2Down(tnn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        mid = cout // 2
        self.conv1, self.bn1 = _conv(cin, cin, 3, 2, groups=cin), tnn.BatchNorm2d(cin)
        self.conv2, self.bn2 = _conv(cin, mid, 1), tnn.BatchNorm2d(mid)
        self.conv3, self.bn3 = _conv(cin, mid, 1), tnn.BatchNorm2d(mid)
        self.conv4, self.bn4 = _conv(mid, mid, 3, 2, groups=mid), tnn.BatchNorm2d(mid)
        self.conv5, self.bn5 = _conv(mid, mid, 1), tnn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return _shuffle(torch.cat([left, right], 1), 2)


class ShuffleV2(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1, self.bn1 = _conv(3, 24, 1), tnn.BatchNorm2d(24)
        cin = 24
        for s, (cout, n) in enumerate(zip((116, 232, 464), (3, 7, 3)), 1):
            units = [ShuffleV2Down(cin, cout)] + [ShuffleV2Basic(cout) for _ in range(n)]
            setattr(self, f"layer{s}", tnn.Sequential(*units))
            cin = cout
        self.conv2, self.bn2 = _conv(cin, 1024, 1), tnn.BatchNorm2d(1024)
        self.linear = tnn.Linear(1024, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.linear(F.avg_pool2d(x, 4).flatten(1))

    def features(self, x):
        x, feats = _three_stage_features(self, F.relu(self.bn1(self.conv1(x))))
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(x))), 1).flatten(1)
        feats["pooled_feat"] = pooled
        return self.linear(pooled), feats


# ----------------------------------------------------------------------------------------
# MobileNetV2 (mobile_half: expansion 6, width 0.5, stride-2 stem, 1280-d last conv).


def _conv_bn_relu(cin, cout, k, stride=1, groups=1):
    return [_conv(cin, cout, k, stride, groups), tnn.BatchNorm2d(cout), tnn.ReLU()]


class InvertedResidual(tnn.Module):
    def __init__(self, cin, cout, stride, t):
        super().__init__()
        hid = cin * t
        self.residual = stride == 1 and cin == cout
        self.conv = tnn.Sequential(
            *_conv_bn_relu(cin, hid, 1),
            *_conv_bn_relu(hid, hid, 3, stride, hid),
            _conv(hid, cout, 1),
            tnn.BatchNorm2d(cout),
        )

    def forward(self, x):
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileHalf(tnn.Module):
    def __init__(self, num_classes, t=6, width=0.5):
        super().__init__()
        cin = int(32 * width)
        self.conv1 = tnn.Sequential(*_conv_bn_relu(3, cin, 3, 2))
        self.blocks = tnn.ModuleList()
        setting = [(1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2)]
        setting += [(t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1)]
        for e, c, n, s in setting:
            units = []
            for i in range(n):
                units.append(InvertedResidual(cin, int(c * width), s if i == 0 else 1, e))
                cin = int(c * width)
            self.blocks.append(tnn.Sequential(*units))
        self.conv2 = tnn.Sequential(*_conv_bn_relu(cin, 1280, 1))
        self.classifier = tnn.Sequential(tnn.Linear(1280, num_classes))

    def forward(self, x):
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        x = F.avg_pool2d(self.conv2(x), 2, ceil_mode=True)
        return self.classifier(x.flatten(1))

    def features(self, x):
        # mdistiller has no preact_feats here; ours are the stage outputs (linear blocks).
        x = self.conv1(x)
        feats = [x]
        for g, block in enumerate(self.blocks):
            x = block(x)
            if g in (1, 2, 4, 6):
                feats.append(x)
        pooled = F.adaptive_avg_pool2d(self.conv2(x), 1).flatten(1)
        return self.classifier(pooled), {
            "feats": feats,
            "preact_feats": feats,
            "pooled_feat": pooled,
        }

    def get_bn_before_relu(self):
        return [self.blocks[g][-1].conv[-1] for g in (1, 2, 4, 6)]


# ----------------------------------------------------------------------------------------
# MobileNetV1 (ImageNet; model.0 = stem, model.1..13 = depthwise-separable, model.14 = pool).


class MobileNetV1(tnn.Module):
    def __init__(self, num_classes):
        super().__init__()
        layers = [tnn.Sequential(*_conv_bn_relu(3, 32, 3, 2))]
        cin = 32
        for cout, s in (
            [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
            + [(512, 1)] * 5
            + [(1024, 2), (1024, 1)]
        ):
            layers.append(
                tnn.Sequential(*_conv_bn_relu(cin, cin, 3, s, cin), *_conv_bn_relu(cin, cout, 1))
            )
            cin = cout
        self.model = tnn.Sequential(*layers, tnn.AvgPool2d(7))
        self.fc = tnn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.model(x).flatten(1))

    def features(self, x):
        # mdistiller's: preact_feats = the pointwise BN outputs of blocks 3, 5, 11, 13 (no
        # stem entry); any input size (adaptive pooling instead of AvgPool2d(7)).
        preacts = []
        for k in range(14):
            block = self.model[k]
            if k in (3, 5, 11, 13):
                pre = block[:-1](x)
                preacts.append(pre)
                x = F.relu(pre)
            else:
                x = block(x)
        pooled = F.adaptive_avg_pool2d(x, 1).flatten(1)
        feats = [F.relu(p) for p in preacts]
        return self.fc(pooled), {"feats": feats, "preact_feats": preacts, "pooled_feat": pooled}

    def get_bn_before_relu(self):
        return [self.model[k][-2] for k in (3, 5, 11, 13)]
