"""Project dataset builders and local-file readers.

`tiny_imagenet` imports tensorflow_datasets: import it lazily (input_pipeline does).
"""
