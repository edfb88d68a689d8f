"""ember: a federated-learning runtime. Training scripts use ember.client."""

__version__ = "0.1.0"
