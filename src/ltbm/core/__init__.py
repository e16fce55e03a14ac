"""The compression kernel's foundations, below every method: the budget rule, the Plan and
the slot sums."""
