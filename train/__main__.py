"""`python -m flaxlm.train` does what `flaxlm-train` does."""

from flaxlm.train.commands.train import main

main()
