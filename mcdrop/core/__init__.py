"""The core library: dropout layers, the model contract and models, text pipeline, uncertainty maths, checkpoints
and the Monte Carlo engine. It depends on torch, safetensors and numpy only; training and serving build on it,
and it imports neither of them."""
