"""Engine core: model, KV cache, scheduler. Plain Python + PyTorch, no Ray."""
