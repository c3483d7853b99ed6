"""One module per entry point: train.py, evaluate.py, generate.py and report.py each call the `main` of theirs."""
