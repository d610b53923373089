"""Planning a run before it starts: its FLOPs, time and memory (estimate.py), whether its step compiles and fits a
TPU slice (tpu_compile.py), and the chips' peak FLOP/s and memory bandwidth (hardware.py)."""
