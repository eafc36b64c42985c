"""Studies: fair optimizer comparisons over ordinary runs."""
