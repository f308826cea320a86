"""Detection: Faster R-CNN + FPN ops, models, data and COCO evaluation (DESIGN.md section 7)."""
