"""Run bookkeeping: run-folder I/O, folder locks, process ranks, model checkpoints."""
