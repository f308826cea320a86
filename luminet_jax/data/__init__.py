"""Data: input pipelines (TFDS / local files -> tf.data -> numpy) and device-resident data.

Import the submodules directly: `input_pipeline`, `augment` and `autoaugment` import
TensorFlow (import them lazily); `device_data` and `normalize` (the on-device normalization
of uint8 batches) are pure JAX.
"""
