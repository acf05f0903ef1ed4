"""A training run on disk: its folder and lock (``run_folder``, ``run_lock``), its record (``run_record``), its
training state (``train_state``), ``--resume`` as a source of options (``resume``), its datasets (``run_data``)
and its logs (``loggers``)."""
