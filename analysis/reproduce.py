"""`python -m analysis.reproduce`: kept as an entry point. Reproduction trains, so the command
lives with the training runtime in sweeps/reproduce.py (`lora-sweep reproduce`)."""

import sys

from sweeps.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
