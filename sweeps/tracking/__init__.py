"""MLflow: the runbook that writes runs, the single run's writer process, curve PNGs, and the redaction of secrets before anything is stored."""
