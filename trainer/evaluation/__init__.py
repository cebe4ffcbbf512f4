"""Evaluation of a trial: eval loss and accuracy (`scoring`), greedy answers (`generation`) and
the metrics computed from them (`metrics`)."""
