"""How trials run: the worker processes and their plan, one trial top to bottom, the typed events they send, the supervisor and the sweep session, the race."""
