"""Kubernetes API access: client construction and the Spiderpool resource types."""
