"""rlexp's Hydra launcher: a multirun's jobs that differ only in ``seed`` train as one batch."""
