"""TFDS `coco/2017` as a detection `records.Split` (random access through `as_data_source`).

TensorFlow Datasets is imported lazily, only when this source is used. The dataset must be
prepared in the array_record format (random access, so batches stay a pure function of the
step); `TFDS_HINT` says how, also without network on the training machine.
"""

import functools
import io
import os
import pathlib

import numpy as np
from absl import logging
from PIL import Image

from luminet_jax.detection import records

NAME = "coco/2017"
# COCO's 80 category ids in sorted order: TFDS labels 0..79 follow the json's categories, which
# are sorted by id, so TFDS label k is category COCO_CATEGORY_IDS[k].
COCO_CATEGORY_IDS = (
    *range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70,
    *range(72, 83), *range(84, 91),
)  # fmt: skip
TFDS_HINT = (
    "Prepare it once (about 25 GB) with `tfds build coco/2017 --file_format=array_record "
    "--data_dir={data_dir}`. Without network there, download train2017.zip, val2017.zip and "
    "annotations_trainval2017.zip from http://images.cocodataset.org/ (zips/ and annotations/) "
    "elsewhere, put them in {data_dir}/downloads/manual/ and run the same command: TFDS takes "
    "files found in the manual dir instead of downloading them. Or unzip them into one folder "
    "and use the dataset name coco_dir:<that folder>."
)


def _missing(where) -> FileNotFoundError:
    return FileNotFoundError(
        f"{NAME} is not prepared in {where}. " + TFDS_HINT.format(data_dir=where)
    )


def _builder(data_dir):
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    if not (pathlib.Path(root).expanduser() / NAME).is_dir():  # Say so before importing TF.
        raise _missing(root)
    import tensorflow_datasets as tfds

    builder = tfds.builder(NAME, data_dir=data_dir)
    if not builder.is_prepared():
        raise _missing(builder.data_dir)
    return builder


def class_names(data_dir) -> tuple[str, ...]:
    """The 80 category names in label order (raises FileNotFoundError with the hint)."""
    return tuple(_builder(data_dir).info.features["objects"]["label"].names)


def _record(example, image_size, record_cls):
    height, width = image_size
    objects = example["objects"]
    ymin, xmin, ymax, xmax = np.asarray(objects["bbox"], np.float64).reshape(-1, 4).T
    boxes = np.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=1)
    keep = ~np.asarray(objects["is_crowd"], bool).reshape(-1)
    keep &= (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    classes = np.asarray(objects["label"], np.int32).reshape(-1)
    return record_cls(
        int(example["image/id"]),
        str(example["image/filename"]),
        height,
        width,
        boxes[keep].astype(np.float32),
        classes[keep],
    )


def split(name: str, data_dir):
    """`records.Split` over TFDS split `name` ("train" or "validation")."""
    import tensorflow_datasets as tfds

    builder = _builder(data_dir)
    try:
        source = builder.as_data_source(split=name, decoders={"image": tfds.decode.SkipDecoding()})
    except (NotImplementedError, ValueError) as e:  # Prepared as tfrecord only.
        raise ValueError(
            f"{NAME} in {builder.data_dir} has no array_record files for random access ({e}). "
            + TFDS_HINT.format(data_dir=data_dir or "~/tensorflow_datasets")
        ) from e

    def example(i):
        ex = source[i]
        image = records.decode(ex["image"])
        return _record(ex, image.shape[:2], records.Record), image

    @functools.cache
    def sizes():
        # A pass over the split's encoded images (headers parsed, pixels not decoded): the
        # aspect-ratio buckets of the train batches need every image's size up front.
        logging.info("Reading the image sizes of %s %s (one pass over the split)", NAME, name)
        return np.array([records.decoded_size(ex["image"]) for ex in source], np.int64)

    @functools.cache
    def gt():
        images, annotations = [], []
        for ex in source:
            with Image.open(io.BytesIO(ex["image"])) as img:
                width, height = img.size
            image_id = int(ex["image/id"])
            images.append(
                {
                    "id": image_id,
                    "height": height,
                    "width": width,
                    "file_name": str(ex["image/filename"]),
                }
            )
            objects = ex["objects"]
            bbox = np.asarray(objects["bbox"], np.float64).reshape(-1, 4)
            for j in range(len(bbox)):
                ymin, xmin, ymax, xmax = bbox[j]
                annotations.append(
                    {
                        "id": int(objects["id"][j]),
                        "image_id": image_id,
                        "category_id": COCO_CATEGORY_IDS[int(objects["label"][j])],
                        "bbox": [
                            xmin * width,
                            ymin * height,
                            (xmax - xmin) * width,
                            (ymax - ymin) * height,
                        ],
                        # Reference: TFDS stores COCO's (segmentation) area as an integer.
                        "area": float(objects["area"][j]),
                        "iscrowd": int(objects["is_crowd"][j]),
                    }
                )
        categories = [
            {"id": c, "name": n} for c, n in zip(COCO_CATEGORY_IDS, class_names(data_dir))
        ]
        return {"images": images, "annotations": annotations, "categories": categories}

    return records.Split(len(source), example, gt, None, sizes)
