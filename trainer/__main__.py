"""`python -m trainer`: the trainer is the library that runs one fine-tune; say which commands run it."""

import sys

sys.exit("python -m trainer: not a command (the trainer is a library); use `python sweep.py -m [overrides]` "
         "(a sweep), `python sweep.py [overrides]` (one run) or `lora-sweep --help` (the tools around a sweep)")
