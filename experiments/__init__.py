"""The paper's studies, one folder each (README, launch script, collector, results).

Nothing here is imported by the library; the scripts import `luminet_jax`, `configs` and
`experiments.common`. Run them from the repository root, e.g.
`python experiments/table1_cifar100/run.py --help`.
"""
