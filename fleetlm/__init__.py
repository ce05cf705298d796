"""fleetlm: a Kubernetes-native LLM serving platform."""

__version__ = "0.1.0"
