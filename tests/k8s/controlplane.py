"""A real Kubernetes control plane on loopback: etcd + kube-apiserver + kube-controller-manager.

This is the test suite's cluster. It is the real API server (validation, admission, RBAC, CRDs,
server-side apply, watch) and the real controllers (Deployment -> ReplicaSet -> Pod, garbage
collection, service-account tokens), with no kubelet and no container runtime: Pods stay
Pending unless `fake_kubelet` plays the kubelet's part.

Binaries come from `assets_dir()`: `$KUBEBUILDER_ASSETS` (envtest's convention), else
`$K8S_ASSETS`, else `~/.cache/qlens/k8s-v1.20.2` where `tests/k8s/control-plane build` puts them.
Only the standard library and the `openssl` command are used, so the `control-plane` script can
run this module with any Python 3.

    python -m tests.k8s.controlplane start STATE_DIR   (prints `export KUBECONFIG=...`)
    python -m tests.k8s.controlplane stop STATE_DIR
"""

from __future__ import annotations

import base64
import ctypes
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("kube-apiserver", "kube-controller-manager", "etcd")
DEFAULT_ASSETS = Path.home() / ".cache" / "qlens" / "k8s-v1.20.2"
BUILD_HINT = "run `tests/k8s/control-plane build` (once per machine, ~5 min) or set KUBEBUILDER_ASSETS"
CONTEXT = "local"
# ClusterIPs; the node (tests/k8s/node) routes this range to kube-proxy, so both must agree
SERVICE_CIDR = "10.0.0.0/24"


class ControlPlaneError(RuntimeError):
    """The control plane could not be started; the message says why and what to do."""


def assets_dir() -> Path:
    for var in ("KUBEBUILDER_ASSETS", "K8S_ASSETS"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return DEFAULT_ASSETS


def missing_binaries(assets: Path | None = None) -> list[str]:
    assets = assets or assets_dir()
    return [b for b in BINARIES if not os.access(assets / b, os.X_OK)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies (Linux).

    A pytest run killed with SIGKILL then leaves no etcd or apiserver behind.
    """
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {args[0]} failed: {proc.stderr.strip()[-300:]}")


def make_pki(pki: Path) -> None:
    """A CA, the apiserver's serving cert, an admin client cert, the service-account key, a token."""
    if (pki / "admin.token").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "365", "-subj", "/CN=local-k8s-ca", cwd=pki)
    (pki / "srv.ext").write_text(
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
        "DNS:kubernetes.default.svc\n")
    (pki / "cli.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for name, subj, ext in (("apiserver", "/CN=kube-apiserver", "srv.ext"),
                            ("admin", "/O=system:masters/CN=admin", "cli.ext")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", subj, cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "365", "-extfile", ext, cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)
    token = secrets.token_hex(16)
    (pki / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
    (pki / "admin.token").write_text(token)
    for p in pki.iterdir():
        if p.suffix in (".key", ".token", ".csv"):
            p.chmod(0o600)


def kubeconfig_text(server: str, ca_pem: bytes, user: dict[str, str], context: str = CONTEXT) -> str:
    ca = base64.b64encode(ca_pem).decode()
    user_fields = ", ".join(f'{k}: "{v}"' for k, v in user.items())
    return (
        "apiVersion: v1\nkind: Config\n"
        f'clusters:\n- name: local\n  cluster: {{server: "{server}", certificate-authority-data: "{ca}"}}\n'
        f"users:\n- name: admin\n  user: {{{user_fields}}}\n"
        f"contexts:\n- name: {context}\n  context: {{cluster: local, user: admin, namespace: default}}\n"
        f"current-context: {context}\n"
    )


def _minor_version(binary: Path) -> int:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True).stdout
    match = re.search(r"v1\.(\d+)", out)
    return int(match.group(1)) if match else 20


@dataclass
class ControlPlane:
    """One control plane whose state (PKI, etcd data, logs, pid files, kubeconfig) lives in `dir`."""

    dir: Path
    assets: Path = field(default_factory=assets_dir)
    server: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    def start(self, tie_to_parent: bool = True, timeout: float = 90) -> ControlPlane:
        """Start etcd, then the apiserver (wait for /readyz), then the controller-manager.

        `tie_to_parent`: children die with this process (the pytest fixture); the CLI passes False
        so the cluster outlives `control-plane start`. On any failure everything started is stopped.
        """
        missing = missing_binaries(self.assets)
        if missing:
            raise ControlPlaneError(f"no {', '.join(missing)} in {self.assets}: {BUILD_HINT}")
        self.dir = self.dir.resolve()
        (self.dir / "logs").mkdir(parents=True, exist_ok=True)
        make_pki(self.pki)
        try:
            self._start_all(tie_to_parent, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, args: list[str], tie_to_parent: bool) -> None:
        log = open(self.dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if tie_to_parent else None, start_new_session=not tie_to_parent,
        )
        log.close()
        self.procs[name] = proc
        (self.dir / f"{name}.pid").write_text(str(proc.pid))

    def _wait(self, name: str, url: str, timeout: float, context: ssl.SSLContext | None = None,
              token: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            try:
                with urllib.request.urlopen(request, timeout=2, context=context) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise ControlPlaneError(f"{name} did not become ready (see {self.dir / 'logs' / (name + '.log')})")

    def _start_all(self, tie_to_parent: bool, timeout: float) -> None:
        pki, a = self.pki, self.assets
        etcd_port, peer_port, api_port, kcm_port = (free_port() for _ in range(4))
        self.server = f"https://127.0.0.1:{api_port}"
        ca_pem = (pki / "ca.crt").read_bytes()
        token = (pki / "admin.token").read_text().strip()
        self.kubeconfig.write_text(kubeconfig_text(self.server, ca_pem, {"token": token}))
        kcm_kubeconfig = self.dir / "kcm.kubeconfig"
        kcm_kubeconfig.write_text(kubeconfig_text(self.server, ca_pem, {
            "client-certificate-data": base64.b64encode((pki / "admin.crt").read_bytes()).decode(),
            "client-key-data": base64.b64encode((pki / "admin.key").read_bytes()).decode(),
        }))
        for p in (self.kubeconfig, kcm_kubeconfig):
            p.chmod(0o600)

        etcd = f"http://127.0.0.1:{etcd_port}"
        peer = f"http://127.0.0.1:{peer_port}"
        self._spawn("etcd", [
            str(a / "etcd"), "--name", "local", "--data-dir", str(self.dir / "etcd-data"),
            "--listen-client-urls", etcd, "--advertise-client-urls", etcd,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"local={peer}",
        ], tie_to_parent)
        self._wait("etcd", f"{etcd}/health", 30)

        self._spawn("apiserver", [
            str(a / "kube-apiserver"), f"--etcd-servers={etcd}",
            "--bind-address=127.0.0.1", f"--secure-port={api_port}", "--advertise-address=127.0.0.1",
            "--endpoint-reconciler-type=none",
            # the real node (tests/k8s/node) registers by IP; dial kubelets by address, never by a
            # host name the host cannot resolve (logs, exec, port-forward go apiserver -> kubelet)
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            # a namespace's annotation scheduler.alpha.kubernetes.io/defaultTolerations gives its
            # pods tolerations: how real-node tests' pods (and only theirs) tolerate the node's taint
            "--enable-admission-plugins=PodTolerationRestriction",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}", f"--token-auth-file={pki / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true", "--profiling=false",
            f"--cert-dir={pki / 'generated'}",
        ], tie_to_parent)
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self._wait("apiserver", f"{self.server}/readyz", timeout, ctx, token)

        kcm = a / "kube-controller-manager"
        self._spawn("controller-manager", [
            str(kcm), f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}", f"--authorization-kubeconfig={kcm_kubeconfig}",
            *(["--port=0"] if _minor_version(kcm) < 24 else []),
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}", f"--cert-dir={pki / 'kcm'}",
            f"--service-account-private-key-file={pki / 'sa.key'}", f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--use-service-account-credentials=true", "--leader-elect=false",
        ], tie_to_parent)

    def stop(self, graceful: bool = True) -> None:
        """Stop in reverse order (controller-manager, apiserver, etcd).

        Graceful: SIGTERM, then SIGKILL after 5 s (about 6 s in all). A throw-away test cluster
        passes graceful=False: SIGKILL at once, since nothing in it is worth a clean shutdown.
        """
        for name in ("controller-manager", "apiserver", "etcd"):
            pid_file = self.dir / f"{name}.pid"
            proc = self.procs.pop(name, None)
            pid = proc.pid if proc else int(pid_file.read_text()) if pid_file.exists() else None
            if pid is not None:
                _terminate(pid, proc, 5 if graceful else 0)
            pid_file.unlink(missing_ok=True)


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM if grace else signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + (grace or 5)
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        else:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        proc.wait(5)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: controlplane start|stop STATE_DIR", file=sys.stderr)
        return 2
    plane = ControlPlane(Path(argv[1]))
    if argv[0] == "stop":
        plane.stop()
        return 0
    try:
        plane.start(tie_to_parent=False)
    except ControlPlaneError as exc:
        print(f"control-plane: {exc}", file=sys.stderr)
        return 1
    print(f"export KUBECONFIG={plane.kubeconfig}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
