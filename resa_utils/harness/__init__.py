"""Running and recording notebooks: runner, parameter checks, tracking, reports, plots. The top layer."""
