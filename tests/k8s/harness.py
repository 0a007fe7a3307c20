"""`qlensctl` against the session's control plane: the one harness of the cluster and day-2 tests.

`Cli` runs `qlensctl` in one of two modes, chosen per test:

- `"in-process"`: through `qlensctl.main.run`, the console script's entry (where errors become
  messages and exit codes). Fast, and what the test monkeypatches applies; library calls the test
  makes itself (`load_environment("staging")`, `connect(...)`) see the same environment.
- `"subprocess"`: `python -m qlensctl.main` as a real process, for what only a process shows (an
  environment of its own, its exit, no state shared with the test).

Either way it runs in the folder `cli.cwd` (where `backup/` lands) with one environment: the test
process's own, with the developer's credentials, keys file and Redis removed (`SCRUB`), plus
what the fixtures and the test set (`cli.setenv`, `cli.delenv`, pytest's `monkeypatch`, or `env=`
for one run). A process started with `spawn` (two commands at once, Ctrl-C) gets it too.

`Target` is what a test deploys to: the environments staging and production with a namespace of
their own (served by the fake kubelet), their environment files (the checkout's, with those
namespaces; `environment_file` is the one way to plant or change them), a kubeconfig with the
contexts `local` and `qlens-production` (both this cluster), and its `Cli`. It reads the cluster
back: snapshots of what the deploy commands could touch, images, replicas, Helm's records, and
waits for conditions.

Fixtures (registered for the whole suite in tests/conftest.py):

- `cli`: a `Cli` in subprocess mode, with no cluster (the environments of the checkout);
- `target`: a `Target` run in-process, context `local` current, the fake provider credentials
  `SECRET_VARS` set, namespaces not created yet (a first deploy creates them);
- `ops`: a `Target` run by `cli` (subprocess), context `qlens-production` current, no provider
  credentials, both namespaces created (for objects a test makes, or a release `install`ed
  through the embedded Helm SDK without qlensctl);
- `sentinels`: provider credentials with unmistakable values, for `assert_no_secrets`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from tests.k8s.fake_kubelet import FakeKubelet
from tests.k8s.fixtures import KubeCluster
from tests.support.cli import ROOT, SCRUB, Result, qlensctl, run_cli
from tests.support.stack import deep_merge

Mode = Literal["in-process", "subprocess"]

ENVIRONMENTS = ("staging", "production")
SERVICES = ("qlens-cache", "qlens-gateway", "qlens-router")
LOCK = "qlens-deploy-lock"  # qlensctl's deploy lock, a Lease in the release's namespace

# what `target` puts in the environment: deploy syncs them into Secret qlens-secrets
SECRET_VARS = {
    "AZURE_OPENAI_ENDPOINT": "https://unit-test.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "sk-test-azure-NEVER-PRINTED-1234",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "AKIATESTNEVERPRINTED",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-NEVER-PRINTED-5678",
}


# -- running qlensctl ------------------------------------------------------------------------------


@dataclass
class Run(Result):
    """A `qlensctl` run's result that names its arguments when an assertion shows it."""

    args: list[str] = field(default_factory=list)

    def __str__(self) -> str:  # what a failed assertion shows
        head = f"qlensctl {' '.join(self.args)} -> {self.code}"
        return f"{head}\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class Cli:
    """`qlensctl` in `mode`, in the folder `cwd`, with this test's environment (module docstring).
    Every run is kept in `runs`, so a test can search all that was printed (`all_output`)."""

    def __init__(self, mode: Mode, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mode = mode
        self.cwd = cwd
        self.runs: list[Run] = []
        self._monkeypatch = monkeypatch
        cwd.mkdir(parents=True, exist_ok=True)
        for name in list(os.environ):
            if name in SCRUB or name.startswith("AZURE_"):
                monkeypatch.delenv(name)
        monkeypatch.setenv("QLENS_ENVIRONMENTS", str(ROOT / "environments"))
        monkeypatch.chdir(cwd)

    def setenv(self, variables: Mapping[str, str]) -> None:
        """Set variables for every later run (until the test ends)."""
        for name, value in variables.items():
            self._monkeypatch.setenv(name, value)

    def delenv(self, *names: str) -> None:
        for name in names:
            self._monkeypatch.delenv(name, raising=False)

    def __call__(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 240) -> Run:
        """Run `qlensctl ARGS` and wait for it; `env`: variables for this run only. `timeout` bounds
        a process (an in-process run is bounded by the test's own timeout)."""
        if self.mode == "in-process":
            with pytest.MonkeyPatch.context() as mp:
                for name, value in (env or {}).items():
                    mp.setenv(name, value)
                result = run_cli(*args)
            run = Run(result.code, result.out, result.err, list(args))
        else:
            proc = qlensctl(*args, env=self.process_env(env), cwd=self.cwd, timeout=timeout)
            run = Run(proc.returncode, proc.stdout, proc.stderr, list(args))
        self.runs.append(run)
        return run

    def process_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a `qlensctl` process: this test's, a wide console without colours."""
        return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONPATH": str(ROOT), **(extra or {})}

    def spawn(self, *args: str, name: str = "qlensctl") -> subprocess.Popen[bytes]:
        """Start `qlensctl ARGS` as a process (in either mode) and return at once; its output goes
        to NAME.out / NAME.err in `cwd`. The test waits for it or stops it."""
        with open(self.cwd / f"{name}.out", "wb") as out, open(self.cwd / f"{name}.err", "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "qlensctl.main", *args], cwd=self.cwd,
                                    env=self.process_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)

    def spawned_output(self, name: str = "qlensctl") -> str:
        return (self.cwd / f"{name}.out").read_text() + (self.cwd / f"{name}.err").read_text()

    def all_output(self) -> str:
        return "".join(r.text for r in self.runs)


def assert_ok(result: Result, what: str = "command") -> None:
    assert result.code == 0, f"{what} failed ({result.code}):\n{result.text}"
    assert "Traceback" not in result.text


def assert_refused(result: Result, code: int, *words: str) -> None:
    """A refusal as the user sees it: the exit code, no traceback, an error and a hint line, and
    the words that say what happened and what to do."""
    assert result.code == code, result.text
    assert "Traceback" not in result.text
    assert "error:" in result.err and "hint:" in result.err, result.err
    for word in words:
        assert word in result.err, f"{word!r} not in:\n{result.err}"


def assert_one_clear_error(result: Result, code: int = 1) -> list[str]:
    """A failure as the user sees it: exit `code`, no traceback, stderr from `error: ...` (what
    failed) to `hint: ...` (what to do). Returns stderr's lines."""
    assert result.code == code, result.text
    assert "Traceback" not in result.text
    lines = result.err.strip().splitlines()
    assert lines[0].startswith("error: ") and lines[-1].startswith("hint: "), result.err
    return lines


# -- secrets no output may show --------------------------------------------------------------------


def secret_values(variables: Mapping[str, str]) -> list[str]:
    """The values worth searching for (a region is a plain word, and "us-east-1" is also in the
    values), and the password alone of a Redis URL among them."""
    out = [v for k, v in variables.items() if k != "AWS_REGION"]
    if "QLENS_REDIS_URL" in variables:
        out.append(variables["QLENS_REDIS_URL"].split(":")[2].split("@")[0])
    return out


def assert_no_secrets(text: str, variables: Mapping[str, str] = SECRET_VARS, where: str = "output") -> None:
    names = [k for k in variables if k != "AWS_REGION"] + ["the Redis password"]
    for name, value in zip(names, secret_values(variables), strict=False):
        assert value not in text, f"{name}'s value appeared in {where}"


# -- the deployment target -------------------------------------------------------------------------


@dataclass
class Target:
    """What a test deploys to (module docstring), and its `Cli`."""

    cli: Cli
    cluster: KubeCluster
    kubelet: FakeKubelet
    envdir: Path
    kubeconfig: Path
    namespaces: dict[str, str]  # environment name -> its namespace in this test

    @classmethod
    def create(cls, cli: Cli, cluster: KubeCluster, kubelet: FakeKubelet, root: Path, *,
               context: str = "local", credentials: Mapping[str, str] | None = None) -> Target:
        """Namespaces, environment files and kubeconfig (`context` current) under `root`, set in
        `cli`'s environment with `credentials`. The namespaces are not created (`create_namespace`)."""
        namespaces = {env: cluster.new_namespace(f"qlens-{env}", create=False) for env in ENVIRONMENTS}
        for ns in namespaces.values():
            kubelet.serve(ns)
        envdir = root / "environments"
        envdir.mkdir()
        kubeconfig = cluster.kubeconfig_with_contexts(root / "kubeconfig", ["qlens-production"], context)
        target = cls(cli, cluster, kubelet, envdir, kubeconfig, namespaces)
        for env in ENVIRONMENTS:
            target.environment_file(env)
        cli.setenv({"KUBECONFIG": str(kubeconfig), "QLENS_ENVIRONMENTS": str(envdir), **(credentials or {})})
        return target

    @property
    def staging_ns(self) -> str:
        return self.namespaces["staging"]

    @property
    def production_ns(self) -> str:
        return self.namespaces["production"]

    @property
    def cwd(self) -> Path:
        return self.cli.cwd

    @property
    def backups(self) -> Path:
        """Where qlensctl writes its backups by default (`backup/` in its folder)."""
        return self.cli.cwd / "backup"

    # running qlensctl
    def qlensctl(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 240) -> Run:
        """Run `qlensctl ARGS` the way `cli` does (its mode)."""
        return self.cli(*args, env=env, timeout=timeout)

    def spawn(self, *args: str, name: str = "qlensctl") -> subprocess.Popen[bytes]:
        return self.cli.spawn(*args, name=name)

    def spawned_output(self, name: str = "qlensctl") -> str:
        return self.cli.spawned_output(name)

    def wait_for(self, what: str | Callable[[], str], condition: Callable[[], Any], timeout: float = 60,
                 interval: float = 0.1) -> None:
        """Poll until `condition()` holds; else fail naming `what` (a callable: said at the end)."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                said = what() if callable(what) else what
                raise AssertionError(f"{said}: not after {timeout} s")
            time.sleep(interval)

    # the environments and the kubeconfig
    def environment_file(self, env: str, **changes: Any) -> Path:
        """This test's environments/ENV.yaml: the checkout's file with the test's namespace, and
        `changes` merged over what the test's copy says so far (nested mappings merge)."""
        path = self.envdir / f"{env}.yaml"
        source = path if path.exists() else ROOT / "environments" / f"{env}.yaml"
        doc = deep_merge(yaml.safe_load(source.read_text()), {"namespace": self.namespaces[env], **changes})
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def environment(self, env: str) -> Any:
        from qlensctl.environments import load_environment

        return load_environment(env, self.envdir)

    def use_context(self, name: str) -> None:
        doc = yaml.safe_load(self.kubeconfig.read_text())
        doc["current-context"] = name
        self.kubeconfig.write_text(yaml.safe_dump(doc))

    def create_namespace(self, env: str, annotations: dict[str, str] | None = None) -> str:
        """Create ENV's namespace (before a deploy would), ready for Pods."""
        return self.cluster.create_namespace(self.namespaces[env], annotations)

    # Helm, without qlensctl
    def helm(self) -> Any:
        """The embedded Helm SDK on this test's kubeconfig (its current context)."""
        from qlensctl.helm import select_helm

        return select_helm("embedded", kubeconfig=self.kubeconfig)

    def install(self, env: str, version: str = "v1.0.0", **overrides: Any) -> dict[str, Any]:
        """Install or upgrade release qlens with the environment's rendered values (+ overrides)."""
        from qlensctl import render

        values = render.render_values(self.environment(env), version=version)
        for key, value in overrides.items():
            values[key] = value
        self.helm().upgrade_or_install("qlens", render.chart_dir(), values, self.namespaces[env],
                                       atomic=False, wait=False)
        return values

    # reading the cluster
    @property
    def api(self) -> Any:
        return self.cluster.api

    @property
    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.cluster.api)

    @property
    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.cluster.api)

    def replicas(self, env: str) -> dict[str, int]:
        ns = self.namespaces[env]
        return {s: int(self.apps.read_namespaced_deployment(f"qlens-{s}", ns).spec.replicas or 0)
                for s in ("gateway", "router", "cache")}

    def wait_ready(self, env: str, timeout: float = 90) -> None:
        """Every deployment in ENV's namespace has all its replicas updated and Ready."""
        ns = self.namespaces[env]
        items: list[Any] = []

        def ready() -> bool:
            items[:] = self.apps.list_namespaced_deployment(ns).items
            return bool(items) and all(
                (d.status.ready_replicas or 0) >= (d.spec.replicas or 0)
                and (d.status.updated_replicas or 0) >= (d.spec.replicas or 0) for d in items)

        self.wait_for(lambda: f"deployments in {ns} ready: "
                              f"{[(d.metadata.name, d.status.ready_replicas) for d in items]}",
                      ready, timeout, interval=0.3)

    def release_secrets(self, ns: str, status: str | None = None) -> list[str]:
        """Helm's release records (one Secret per revision), optionally only those in `status`."""
        selector = "owner=helm,name=qlens" + (f",status={status}" if status else "")
        items = self.core.list_namespaced_secret(ns, label_selector=selector).items
        return sorted(s.metadata.name for s in items)

    def images(self, ns: str) -> dict[str, str]:
        return {d.metadata.name: d.spec.template.spec.containers[0].image
                for d in self.apps.list_namespaced_deployment(ns).items}

    def tags(self, ns: str) -> set[str]:
        return {image.rsplit(":", 1)[1] for name, image in self.images(ns).items() if "-previous" not in name}

    def _lists(self) -> dict[str, Any]:
        """kind -> its namespaced list call, for the kinds the chart and qlensctl write."""
        from kubernetes import client

        api = self.cluster.api
        return {
            "Deployment": client.AppsV1Api(api).list_namespaced_deployment,
            "Service": self.core.list_namespaced_service,
            "ConfigMap": self.core.list_namespaced_config_map,
            "Secret": self.core.list_namespaced_secret,
            "ServiceAccount": self.core.list_namespaced_service_account,
            "NetworkPolicy": client.NetworkingV1Api(api).list_namespaced_network_policy,
            "Ingress": client.NetworkingV1Api(api).list_namespaced_ingress,
            "Role": client.RbacAuthorizationV1Api(api).list_namespaced_role,
            "RoleBinding": client.RbacAuthorizationV1Api(api).list_namespaced_role_binding,
            "Lease": client.CoordinationV1Api(api).list_namespaced_lease,  # qlensctl's deploy lock
        }

    def contents(self, ns: str, kinds: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """What the objects of `kinds` in `ns` say: labels, annotations and spec (or data), without
        what the API server and controllers write (resourceVersion, generation, status, ...).
        Equal before and after when an object was changed and changed back (a rollback)."""
        serialize = self.cluster.api.sanitize_for_serialization
        lists = self._lists()
        out: dict[str, dict[str, Any]] = {}
        for kind in kinds:
            for obj in lists[kind](ns).items:
                doc = serialize(obj)
                meta = doc.get("metadata", {})
                notes = {k: v for k, v in (meta.get("annotations") or {}).items()
                         if k != "deployment.kubernetes.io/revision"}  # counts rollouts
                out[f"{kind}/{meta['name']}"] = {"labels": meta.get("labels"), "annotations": notes,
                                                 **{k: v for k, v in doc.items()
                                                    if k not in ("metadata", "status", "apiVersion", "kind")}}
        return out

    def snapshot(self, ns: str) -> dict[str, Any]:
        """Every object the deploy commands could touch in `ns`, with its resourceVersion (which
        changes on any write), plus whether the namespace exists at all."""
        from kubernetes import client

        api = self.cluster.api
        if not any(n.metadata.name == ns for n in self.core.list_namespace().items):
            return {"namespace": False}
        snap: dict[str, Any] = {"namespace": True}
        for kind, fn in self._lists().items():
            snap[kind] = sorted((o.metadata.name, o.metadata.resource_version) for o in fn(ns).items)
        # the HPA controller rewrites status on its own schedule: compare what we write, the spec
        hpas = client.AutoscalingV1Api(api).list_namespaced_horizontal_pod_autoscaler(ns).items
        snap["HorizontalPodAutoscaler"] = sorted((h.metadata.name, str(h.spec.to_dict())) for h in hpas)
        custom = client.CustomObjectsApi(api)
        for group, version, plural in (("policy", "v1beta1", "poddisruptionbudgets"),  # 1.20: not v1
                                       ("external-secrets.io", "v1", "externalsecrets"),
                                       ("monitoring.coreos.com", "v1", "servicemonitors"),
                                       ("monitoring.coreos.com", "v1", "prometheusrules")):
            try:
                items = custom.list_namespaced_custom_object(group, version, ns, plural)["items"]
            except client.ApiException as exc:
                if exc.status != 404:  # CRDs not installed yet
                    raise
                items = []
            snap[plural] = sorted((o["metadata"]["name"], o["metadata"]["resourceVersion"]) for o in items)
        return snap

    def settled_snapshot(self, ns: str, timeout: float = 20) -> dict[str, Any]:
        """A snapshot once the controllers have stopped writing (two equal reads a second apart):
        the baseline a refused command must leave untouched."""
        deadline = time.monotonic() + timeout
        previous = self.snapshot(ns)
        while time.monotonic() < deadline:
            time.sleep(1)
            now = self.snapshot(ns)
            if now == previous:
                return now
            previous = now
        raise AssertionError(f"objects in {ns} kept changing for {timeout} s")


def revisions(target: Target, env: str = "staging") -> list[dict[str, Any]]:
    """`qlensctl history ENV --json`: what the operator sees."""
    result = target.qlensctl("history", env, "--json")
    assert_ok(result, "history")
    revs: list[dict[str, Any]] = json.loads(result.out)["revisions"]
    return revs


def deploy_staging(target: Target, version: str, *extra: str) -> Run:
    result = target.qlensctl("deploy", "staging", "--version", version, "--timeout", "60", *extra)
    assert_ok(result, f"deploy staging {version}")
    return result


def lease(on: Target, ns: str) -> Any:
    """The deploy lock in `ns`, or None."""
    from kubernetes import client

    items = client.CoordinationV1Api(on.cluster.api).list_namespaced_lease(ns).items
    return next((item for item in items if item.metadata.name == LOCK), None)


def plant_lease(on: Target, ns: str, holder: str, operation: str, renewed_ago: float) -> None:
    """A deploy lock as another qlensctl would hold it, last renewed `renewed_ago` seconds ago."""
    from kubernetes import client

    renewed = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=renewed_ago)
    stamp = renewed.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    client.CoordinationV1Api(on.cluster.api).create_namespaced_lease(ns, {
        "metadata": {"name": LOCK, "annotations": {"qlens.io/operation": operation}},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 60, "acquireTime": stamp,
                 "renewTime": stamp}})


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """`qlensctl` as a process, in tmp_path/work, with no cluster (the checkout's environments)."""
    return Cli("subprocess", tmp_path / "work", monkeypatch)


@pytest.fixture
def target(kube_cluster: KubeCluster, fake_kubelet: FakeKubelet, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Target:
    """A target run in-process: context `local` current, SECRET_VARS set, no namespace created."""
    runner = Cli("in-process", tmp_path / "work", monkeypatch)
    return Target.create(runner, kube_cluster, fake_kubelet, tmp_path, credentials=SECRET_VARS)


@pytest.fixture
def ops(kube_cluster: KubeCluster, fake_kubelet: FakeKubelet, tmp_path: Path, cli: Cli) -> Target:
    """A target run by `cli` (a process): context `qlens-production` current, no provider
    credentials, both namespaces created."""
    created = Target.create(cli, kube_cluster, fake_kubelet, tmp_path, context="qlens-production")
    for env in ENVIRONMENTS:
        created.create_namespace(env)
    return created


@pytest.fixture
def sentinels() -> dict[str, str]:
    """Provider credentials with unmistakable values; no output or file may ever contain them."""
    tag = secrets.token_hex(6)
    return {
        "AZURE_OPENAI_ENDPOINT": f"https://sentinel-endpoint-{tag}.openai.azure.com",
        "AZURE_OPENAI_API_KEY": f"SENTINEL-AZKEY-{tag}",
        "AWS_REGION": "us-east-1",  # not secret, and too common to search for
        "AWS_ACCESS_KEY_ID": f"AKIASENTINEL{tag.upper()}",
        "AWS_SECRET_ACCESS_KEY": f"SENTINEL-AWSSECRET-{tag}",
        "QLENS_REDIS_URL": f"redis://:SENTINEL-REDISPW-{tag}@127.0.0.1:1/0",
    }
