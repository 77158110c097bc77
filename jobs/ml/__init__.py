"""The ML library the kinds use: data, the parametric CNN, the training loop, pruning surgery, FLOPs, matmul."""
