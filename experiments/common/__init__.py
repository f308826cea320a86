"""Helpers shared by the studies: launching runs, collecting results, plotting.

- `runs`: run specs, config loading with `key=value` overrides, sequential launching
  (subprocess, in-process, or printing the commands for a cluster).
- `results`: reading workdirs' metrics.jsonl, mean +- std over seeds, markdown tables.
- `plots`: the paper's figure forms (line plots, bar charts) with matplotlib.
"""
