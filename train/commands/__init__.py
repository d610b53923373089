"""The flaxlm-* commands, one module each: parse flags, call the library, print (entry points in setup.py)."""
