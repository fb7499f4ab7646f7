"""How good a model is: held-out ε-MSE and bits/dim, the face-feature distance, and the full evaluation."""
