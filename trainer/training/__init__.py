"""The training loop (`loop`), its checkpoints for preemption and resume (`checkpoint`), and the
choice of the reported eval step (`selection`)."""
