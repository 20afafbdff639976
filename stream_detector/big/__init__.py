"""Big-history training (issue 19): fitting and featurising months of events without holding them in memory."""
