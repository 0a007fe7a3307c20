"""`python -m services.router`: run the router service."""

from services.common.server import serve

serve("router", "services.router.app:create_app")
