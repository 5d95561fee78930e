"""The shared backbone: features to TorchRec tables, sharding, towers, training, metrics, stores."""
