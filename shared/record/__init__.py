"""From runs to a record submission: the generated train_gpt.py, the records folder, its review, significance."""
