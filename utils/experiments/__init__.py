"""Experiments made of many runs: a sweep's plan and its run folders (``plan``), where the runs are launched
(``launch``: here, one after another or several at once, or on a Slurm cluster through submitit), the
results table with seed spreads and paired differences (``results``, ``stats``) and the MLflow sink
(``tracking``). The command is ``tools/sweep.py``."""
