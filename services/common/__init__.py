"""Code shared by the gateway, router and cache services. Imports none of them."""
