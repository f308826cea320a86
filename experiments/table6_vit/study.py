"""Table 6: DeiT-small (21.3M) -> compact ViT (2.4M) on CIFAR-100, KD and LumiNet."""

METHODS = ("kd", "luminet")
PAIRS = {"deits_vitc": "configs/cifar100_deits_vitc.py"}
# The teacher is trained on CIFAR-100 at 32x32 with 4x4 patches (configs/cifar100_deits_vitc.py).
TEACHER_OVERRIDES = (("student.patch_size", "4"),)
PAPER = {("deits_vitc", "kd"): 67.38, ("deits_vitc", "luminet"): 68.42}
