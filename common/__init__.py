"""Small pieces every part of audiorl shares: the registry and the error types."""
