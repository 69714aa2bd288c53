"""anomaly-ae: image anomaly detection with convolutional autoencoders."""

__version__ = "0.1.0"
