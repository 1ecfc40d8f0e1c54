"""The in-process engine on Hugging Face transformers: loading, memory, decoding, batching, tiny model."""

import os

# OpenMP reads this once, when torch loads it. Every module of mimochat that imports torch lives
# in this package, and a package's __init__ runs before any of its modules, so this is the
# earliest point on every path to torch (bench/engine.py, which imports torch itself, sets it
# too). Its worker threads then sleep between parallel regions instead of spinning: the batch
# loop runs beside the task threads, spinning workers took the CPU from them and made CPU
# decoding several times slower (bench/RESULTS.md). An explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
