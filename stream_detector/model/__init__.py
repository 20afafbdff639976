"""The autoencoder, its training, the on-disk bundle and the Redis model registry."""
