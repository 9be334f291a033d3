"""Training: the loop (one run of the recipe, top to bottom), its checks, loss scale and progress, and
what last.pt holds to resume it."""
