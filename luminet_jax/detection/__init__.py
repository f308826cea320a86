"""Detection: Faster R-CNN + FPN ops, models, data and COCO evaluation (DESIGN.md section 7).

Modules (one concept each; import them directly, this package imports nothing heavy):
  ops        box IoU, greedy NMS (plain, masked, per-class), RoIAlign by gather, box coding.
  anchors    detectron2's DefaultAnchorGenerator for p2..p6.
  matching   Matcher (IoU thresholds -> labels) and fixed-size fg/bg sampling, RPN and RoI targets.
  poolers    FPN level assignment and multi-level RoIAlign (ROIAlignV2).
  losses     RPN and RoI head losses.
  coco       COCO box AP through pycocotools' COCOeval; `evaluate` runs a detector over batches.
  sources    COCO-format / TFDS coco/2017 / shipped-sample datasets (tfds_coco: the TFDS reader).
  data       static-shape train (multi-scale + flip, resumable) and eval batches.
  tiny_boxes builds the tiled Tiny-ImageNet boxes set (COCO format); CLI.
  fpn, rpn, roi_heads, rcnn (assembly), convert (detectron2 import), steps (train/eval steps).
  distill    RoI-logit distillation step (the detection task of train.py's loop, for
             config.task = "detection", is luminet_jax/tasks/detection.py).
"""
