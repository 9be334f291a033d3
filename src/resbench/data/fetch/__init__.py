"""Fetching and preparing datasets: verified downloads, safe archive reading, locked atomic preparation."""
