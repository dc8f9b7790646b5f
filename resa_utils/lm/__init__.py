"""Language-model I/O: the model registry and loading, adapters, generation, LoRA training, activations. Imports `data` and `core`."""
