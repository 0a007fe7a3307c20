"""Connecting to an environment's cluster: the one way every command does it.

`connect(environment, kube_context, helm_mode)` runs the context guard (an environment that pins
a context, production, is reached only there), opens the kube client and asks the API server for
its version at once, so an unreachable cluster fails here, in seconds, before anything else. Helm
is opened on the same kubeconfig file and context, passed explicitly: the embedded Helm SDK reads
$KUBECONFIG only once, when it loads, so left to itself an in-process caller that changed
$KUBECONFIG would reach an earlier cluster. Helm is opened on first use (`cluster.helm`): commands
that only read or scale deployments never load its 85 MB library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qlensctl.helm import EmbeddedHelm
    from qlensctl.kube import Kube


@dataclass
class Cluster:
    """The kube client and (on first use) Helm, on one context."""

    kube: Kube
    helm_mode: str = "auto"
    _helm: EmbeddedHelm | None = field(default=None, repr=False)

    @property
    def context(self) -> str:
        return self.kube.context

    @property
    def helm(self) -> EmbeddedHelm:
        if self._helm is None:
            from qlensctl.helm import select_helm

            self._helm = select_helm(self.helm_mode, kubeconfig=self.kube.kubeconfig_file,
                                     kube_context=self.kube.context)
        return self._helm

    def close(self) -> None:
        if self._helm is not None:
            self._helm.close()
        self.kube.close()


def connect(environment: Any, kube_context: str | None = None, helm_mode: str = "auto", *,
            kubeconfig: str | None = None) -> Cluster:
    """ENV's cluster through the context guard, reachable (one request made), Helm to follow."""
    from qlensctl.helm.embedded import check_mode
    from qlensctl.kube import Kube, check_context

    check_mode(helm_mode)  # a bad --helm is a usage error before the cluster is asked
    kube = Kube.open(check_context(environment, kube_context, kubeconfig), kubeconfig)
    try:
        kube.ping()
    except BaseException:
        kube.close()
        raise
    return Cluster(kube, helm_mode)
