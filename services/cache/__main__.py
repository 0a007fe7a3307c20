"""`python -m services.cache`: run the cache service."""

from services.common.server import serve

serve("cache", "services.cache.app:create_app")
