"""The toolkit's workflows (tune, benchmark, validate, package, test data, calibration set), one function each."""
