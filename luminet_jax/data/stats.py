"""Per-channel normalization constants (RGB, on 0..1 pixels), shared by every input path.

- CIFAR-100: mdistiller `mdistiller/dataset/cifar100.py` (the LumiNet reference's data code).
- CIFAR-10: the values usually quoted for the official release (DATA.md; torchvision examples).
- ImageNet: torchvision's ImageNet constants, used by mdistiller's `imagenet.py`.
- Tiny-ImageNet: mean (0.4802, 0.4481, 0.3975), the usual quoted value; std (0.2770, 0.2691,
  0.2821), the per-pixel std over the train set, which agrees with the statistics measured on
  the 20,000-image subset in ../shared/data/DATA.md (0.2764, 0.2686, 0.2818) to 0.001.

No TensorFlow here: the device-resident path reads these without importing it.
"""

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_IMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINY_IMAGENET_STD = (0.2770, 0.2691, 0.2821)
