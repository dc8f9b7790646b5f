"""Bottom layer: atomic files, caches' paths, progress bars, allocator tuning, resumable sweeps, small statistics. Imports nothing from the package."""
