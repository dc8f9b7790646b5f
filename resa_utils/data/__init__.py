"""Data: corpora, token windows, reasoning tasks, synthetic superposition data. Imports only `core`."""
