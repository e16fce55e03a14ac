"""Tables, per-item scores, paired statistics and plots from finished run folders."""
