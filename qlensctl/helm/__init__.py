"""The Helm adapter: the Helm operations qlensctl needs, run by the Helm SDK in-process.

qlensctl needs seven Helm operations: upgrade_or_install (atomic, wait, timeout), rollback,
history, status, get_values, template and lint. One engine implements them,
`embedded.EmbeddedHelm`: the Helm SDK (`helm_python`, package helm-python-sdk: Helm's Go code
behind a C ABI), so nothing needs installing beside the Python package.

There used to be a second engine, the user's `helm` binary through pyhelm3. No `helm` binary can be
installed where QLens is built and tested, so that engine never ran in the test suite while
`auto` picked it on most operators' machines: the engine users got was not the one we tested. It
was removed; `auto` (the default) and `embedded` both mean the SDK. Releases are stored as Helm
stores them (Secrets in the release namespace), so a `helm` CLI can still read and roll them back.

    base.py       what the operations return (Release, LintReport) and the release's name
    embedded.py   the engine, and `select_helm` (the --helm option)
    errors.py     the SDK's failures -> qlensctl errors with a hint (the message classifier)
    manifests.py  rendered files -> one `helm template` stream, and back to objects

Nothing here prints. Importing this package is cheap: helm_python (an 85 MB library) is loaded
inside the methods that need it, so `qlensctl --help` never pays for it. Connecting to a cluster
(kube client plus Helm on the same context) is qlensctl.cluster.connect, not here.
"""

from qlensctl.helm.base import DEFAULT_TIMEOUT, RELEASE, LintMessage, LintReport, Release, image_tag
from qlensctl.helm.embedded import MODES, EmbeddedHelm, select_helm
from qlensctl.helm.errors import ReleaseNotFoundError
from qlensctl.helm.manifests import join_manifests, manifests

__all__ = [
    "DEFAULT_TIMEOUT", "MODES", "RELEASE", "EmbeddedHelm", "LintMessage", "LintReport", "Release",
    "ReleaseNotFoundError", "image_tag", "join_manifests", "manifests", "select_helm",
]
