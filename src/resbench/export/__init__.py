"""`resbench export`: run folders as folders to publish (weights, config.json, model card, curves)."""
