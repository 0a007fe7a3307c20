"""Reliability and security under load, faults and bad input (issue 9): real processes, real Redis,
local provider stand-ins. Run with `scripts/test tests/integration/reliability`."""
