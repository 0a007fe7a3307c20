"""`python -m services.gateway`: run the gateway service."""

from services.common.server import serve

serve("gateway", "services.gateway.app:create_app")
