"""Options that several commands take, declared once so they are spelled, defaulted and explained
the same way everywhere (typer reads these as parameter defaults)."""

from __future__ import annotations

import typer

KUBE_CONTEXT = typer.Option(None, "--kube-context", show_default=False,
                            help="Kube context [default: the current one; an environment that pins one "
                                 "(production) only that one].")
HELM = typer.Option("auto", "--helm", envvar="QLENS_HELM",
                    help="Helm engine: auto or embedded, both the Helm SDK in-process.")
YES = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
JSON = typer.Option(False, "--json", help="Print the result as JSON.")

# the admin API (/admin/v1) of a gateway: `keys` (when the environment has one), `tenants`, `usage`
ADMIN_KEY = typer.Option(None, "--admin-key", envvar="QLENS_ADMIN_KEY", show_default=False,
                         help="Admin key (Secret qlens-admin-keys) for the admin API; never printed.")
URL = typer.Option(None, "--url", show_default=False,
                   help="The gateway at this URL [default: ENV's local stack or Ingress URL].")
PORT_FORWARD = typer.Option(False, "--port-forward",
                            help="Reach svc/qlens-gateway through the Kubernetes API server "
                                 "(like `kubectl port-forward`).")
