"""Table 4: the detection pairs (config files), their teachers and the published COCO AP."""

METHODS = ("vanilla", "kd", "dkd", "luminet")  # "vanilla" is the student alone
ROWS = ("teacher", *METHODS)  # the collected table's row order

# pair -> (student config taking `method=NAME`, teacher config spec for --train-teachers).
PAIRS = {
    "tiny_boxes": ("configs/tiny_boxes_frcnn.py", "configs/tiny_boxes_frcnn.py:method=teacher"),
    # The reduced Table 4 (20 classes, smaller detectors; configs/tiny_boxes_table4.py).
    "tiny_boxes20": (
        "configs/tiny_boxes_table4.py",
        "configs/tiny_boxes_table4.py:method=teacher",
    ),
    "coco": ("configs/coco_frcnn_r101_r18.py", "configs/coco_frcnn_teacher.py:r101"),
}

# COCO 2017 val box AP / AP50 / AP75 (%), R-101-FPN -> R-18-FPN: teacher, student, KD and DKD
# as the DKD paper reports them (which the LumiNet paper's Table 4 cites); LumiNet: 35.34 AP.
PAPER = {
    "teacher": (42.04, 62.48, 45.88),
    "vanilla": (33.26, 53.61, 35.26),
    "kd": (33.97, 54.66, 36.62),
    "dkd": (35.05, 56.60, 37.54),
    "luminet": (35.34, None, None),
}
