"""Local-stack fixtures (gateway + router + cache as real processes): filled by the services work."""
