"""kubetune: declarative fine-tuning on Kubernetes."""
