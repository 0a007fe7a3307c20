"""`qlensctl secrets sync ENV`: provider credentials from your shell to where the cluster reads them.

Staging (secrets.backend: kubernetes): Secret `qlens-secrets` in the environment's namespace.
Production (secrets.backend: keyVault): Azure Key Vault (externalSecrets.vaultUrl), through
azure-identity's DefaultAzureCredential; the External Secrets Operator copies them into the
cluster. Only names are ever shown.
"""

from __future__ import annotations

import typer

from qlensctl import output
from qlensctl.commands.options import JSON, KUBE_CONTEXT, YES

secrets_app = typer.Typer(help="Provider secrets to a Kubernetes Secret (staging) or Key Vault (production).",
                          no_args_is_help=True)


@secrets_app.command("sync")
def sync(
    env: str = typer.Argument(..., help="Environment (staging, production)."),
    vault_url: str = typer.Option(None, "--vault-url", show_default=False,
                                  help="Key Vault URL [default: externalSecrets.vaultUrl of ENV]."),
    prune: bool = typer.Option(False, "--prune", help="Kubernetes: also remove keys no longer needed."),
    kube_context: str = KUBE_CONTEXT,
    yes: bool = YES,
    as_json: bool = JSON,
) -> None:
    """Copy the enabled providers' credentials (e.g. AZURE_OPENAI_*, AWS_*; QLENS_REDIS_URL where Redis
    is used) from this shell to the environment's store."""
    from qlensctl import secrets
    from qlensctl.environments import load_environment

    environment = load_environment(env)
    specs = secrets.needed_secrets(environment)
    values = secrets.collect_secrets(environment)  # all missing named at once; nothing changed yet
    if environment.secrets.backend == "keyVault":
        url = secrets.vault_url_for(environment, vault_url)
        if environment.is_production:
            output.confirm(f"Write {len(values)} secrets to Key Vault {url}?", yes)
        with output.spinner(f"writing to {url}") as update:
            result = secrets.push_key_vault(url, values, progress=lambda name: update(f"writing {name}"))
    else:
        from qlensctl.cluster import connect

        kube = connect(environment, kube_context).kube  # the context guard; fails fast if unreachable
        if environment.is_production:
            output.confirm(f"Write {len(values)} keys to Secret {environment.secrets.name} in "
                           f"{environment.namespace}?", yes)
        result = secrets.sync_kubernetes_secret(kube.api, environment.namespace, values,
                                                environment.secrets.name, prune=prune)
    outcome = {**{k: "created" for k in result.created}, **{k: "updated" for k in result.updated},
               **{k: "unchanged" for k in result.unchanged}, **{k: "removed" for k in result.removed}}
    names = [s.name_in(environment.secrets.backend) for s in specs]
    rows = [{"name": n, "from": s.env_var, "result": outcome.get(n, "")}
            for n, s in zip(names, specs, strict=True)]
    rows += [{"name": k, "from": "", "result": "removed"} for k in result.removed]
    if as_json:
        output.emit_json({"environment": environment.name, "target": result.target, "secrets": rows,
                          "namespaceCreated": result.namespace_created})
        return
    if result.namespace_created:
        output.info(f"Created namespace {environment.namespace}")
    output.table(f"Secrets synced to {result.target}", ["name", "from", "result"],
                 [[r["name"], r["from"], r["result"]] for r in rows])
