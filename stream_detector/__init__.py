"""stream-detector: streaming anomaly detection for real-time fraud flagging.

Events arrive on Kafka, are decoded and validated, turned into features by one shared
``FeatureSpec``, scored in batches by a TorchScript autoencoder, compared with a versioned
threshold kept in Redis, and flagged events are published as explained alerts. Offsets are
committed only after alerts and dead-letter records are delivered.
"""

__version__ = "0.1.0"
