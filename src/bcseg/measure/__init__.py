"""Metrics, observer consensus, evaluation against observers, surgical margins. No TensorFlow here."""
