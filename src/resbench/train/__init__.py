"""Training: the loop (one run of the recipe, top to bottom) and what last.pt holds to resume it."""
