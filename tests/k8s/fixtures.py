"""Cluster fixtures (the real control plane): filled by the cluster-operations work."""
