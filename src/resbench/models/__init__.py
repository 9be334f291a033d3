"""The networks: the ResNet families initialised as the reference, and K seeds packed into one network."""
