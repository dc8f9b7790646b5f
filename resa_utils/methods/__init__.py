"""One module per paper method. Imports `sae`, `lm`, `data`, `core`."""
