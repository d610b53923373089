"""`python -m train` does what `flaxlm-train` does."""

from train.main import main

main()
