"""The Kubernetes manifests as an auditor reads them: checkov (deploy/audit's locked
install) finds nothing but the exceptions written, with their reasons, into the
manifests; every manifest is valid against the Kubernetes API's schemas
(kubernetes-validate, offline) or, for KEDA's kinds, KEDA's own CRD schemas; and the
properties an SRE asks for hold: grace periods above the hard time limit, beat deployed
once, disruption budgets, spread, secrets kept out of the ConfigMap, a locked-down
securityContext, network policies, a WebSocket-ready Ingress, autoscaling that reads the
lists kombu really fills."""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from tests.support.deploy_files import (  # noqa: E402 - after the importorskip
    DEPLOY,
    K8S,
    ROOT,
    config,
    containers,
    k8s_docs,
    manifest_files,
    of_kind,
    option,
    worker_version,
)

SCHEMAS = Path(__file__).parent / "schemas"
CHECKOV = DEPLOY / "audit" / ".venv" / "bin" / "checkov"
WORKERS = ("aiecs-worker-fast", "aiecs-worker-heavy")


def pod_spec(name: str) -> dict:
    return of_kind("Deployment")[name]["spec"]["template"]["spec"]


# -- the auditors ---------------------------------------------------------------------------------
def _missing(what: str) -> None:
    message = f"{what} (run: uv sync --project deploy/audit --locked)"
    if os.environ.get("CI"):  # CI installs it (.ci/run)
        pytest.fail(message)
    pytest.skip(message)


def checkov(path: Path) -> dict:
    """checkov's JSON report on the folder ``path`` (Kubernetes and Dockerfile checks; not
    deploy/audit, checkov's own install), offline."""
    if not CHECKOV.exists():
        _missing("checkov is not installed")
    args = [str(CHECKOV), "--framework", "kubernetes", "dockerfile", "--output", "json",
            "--skip-download", "--compact", "--directory", str(path),
            "--skip-path", "deploy/audit"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=ROOT,
                         env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/"),
                              "BC_SKIP_MAPPING": "TRUE"})
    assert out.stdout.strip(), out.stderr
    reports = json.loads(out.stdout)
    return {r["check_type"]: r for r in (reports if isinstance(reports, list) else [reports])}


def test_checkov_finds_nothing_but_the_justified_exceptions():
    reports = checkov(DEPLOY)
    assert set(reports) == {"kubernetes", "dockerfile"}
    for kind, report in reports.items():
        failed = [(c["check_id"], c["resource"], c["file_path"])
                  for c in report["results"]["failed_checks"]]
        assert failed == [], kind
        assert report["summary"]["passed"] > 0, kind
        for check in report["results"]["skipped_checks"]:  # each exception says why
            reason = (check.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason) > 30 and reason != "No comment provided", check["check_id"]
    skipped = {(c["check_id"], c["resource"])
               for c in reports["kubernetes"]["results"]["skipped_checks"]}
    # the exceptions docs/operations.md ("Kubernetes") lists, and no others
    deployments = {f"Deployment.aiecs.{n}" for n in of_kind("Deployment")}
    assert {c for c, _ in skipped} == {"CKV_K8S_43", "CKV_K8S_35", "CKV_K8S_8", "CKV_K8S_9"}
    assert {r for c, r in skipped if c in ("CKV_K8S_8", "CKV_K8S_9")} == {
        "Deployment.aiecs.aiecs-beat"}
    assert {r for _, r in skipped} == deployments
    docs = (ROOT / "docs" / "operations.md").read_text()
    for check_id in {c for c, _ in skipped} | {"CKV_DOCKER_7"}:
        assert check_id in docs, check_id


def test_checkov_catches_what_the_issue_found(tmp_path):
    """The audit is real: the old manifests' faults, put back, fail it."""
    worker = yaml.safe_load((K8S / "worker-fast.yaml").read_text())
    container = worker["spec"]["template"]["spec"]["containers"][0]
    container["image"] = "aiecs:latest"
    del container["securityContext"]["capabilities"]
    del worker["spec"]["template"]["spec"]["automountServiceAccountToken"]
    (tmp_path / "worker.yaml").write_text(yaml.safe_dump(worker))
    failed = {c["check_id"] for c in checkov(tmp_path)["kubernetes"]["results"][
        "failed_checks"]}
    # :latest, NET_RAW and every capability kept, the service-account token mounted
    assert {"CKV_K8S_14", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_38"} <= failed


def _validate(doc: dict) -> None:
    """One manifest against its schema: the Kubernetes API's (kubernetes-validate's
    offline copy, strict: unknown fields are errors) or KEDA's CRD's."""
    if doc["apiVersion"].startswith("keda.sh/"):
        import jsonschema

        schema = json.loads((SCHEMAS / f"keda_{doc['kind'].lower()}.json").read_text())
        jsonschema.validate(doc, schema)
        return
    import kubernetes_validate

    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_every_manifest_is_valid_against_its_schema():
    pytest.importorskip("kubernetes_validate")
    kinds = set()
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            _validate(doc)
            kinds.add(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "NetworkPolicy",
            "Ingress", "ServiceAccount", "Namespace", "ScaledObject",
            "TriggerAuthentication"} <= kinds


def test_the_validators_reject_a_bad_manifest():
    pytest.importorskip("kubernetes_validate")
    import jsonschema
    import kubernetes_validate

    worker = copy.deepcopy(of_kind("Deployment")["aiecs-worker-fast"])
    worker["spec"]["template"]["spec"]["terminationGracePeriod"] = 630  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(worker)
    scaled = copy.deepcopy(of_kind("ScaledObject")["aiecs-worker-fast"])
    del scaled["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        _validate(scaled)


# -- shutdown, beat, disruptions, spread ----------------------------------------------------------
def test_workers_drain_before_the_kubelet_kills_them():
    hard = int(config()["CELERY_TASK_TIME_LIMIT"])
    assert int(config()["CELERY_TASK_SOFT_TIME_LIMIT"]) < hard
    for name in WORKERS:
        spec = pod_spec(name)
        assert spec["terminationGracePeriodSeconds"] > hard, name
        assert "preStop" not in str(spec)  # SIGTERM itself starts Celery's warm shutdown


def test_beat_is_deployed_once():
    beat = of_kind("Deployment")["aiecs-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"  # the old one releases the lock
    (container,) = beat["spec"]["template"]["spec"]["containers"]
    assert container["command"][:4] == ["celery", "-A", "aiecs_worker", "beat"]
    assert "aiecs-beat" not in of_kind("ScaledObject")


def test_disruption_budgets_and_spread():
    budgets = of_kind("PodDisruptionBudget").values()
    for name, deployment in of_kind("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        covering = [b for b in budgets
                    if b["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        if name == "aiecs-beat":
            assert covering == []  # one replica: a budget would block every drain
            continue
        assert deployment["spec"]["replicas"] >= 2, name
        assert len(covering) == 1 and covering[0]["spec"]["maxUnavailable"] == 1, name
        spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {s["topologyKey"] for s in spread} == {"topology.kubernetes.io/zone",
                                                      "kubernetes.io/hostname"}, name
        for s in spread:
            assert s["labelSelector"]["matchLabels"].items() <= labels.items(), name


# -- secrets, security, network ------------------------------------------------------------------
def test_secrets_come_from_the_secret_not_the_configmap():
    for key, value in config().items():
        assert "://" not in value, key  # no URL (with or without a password) in the ConfigMap
        assert not any(w in key for w in ("URL", "KEY", "PASSWORD", "TOKEN", "AUTH")), key
    secret_env = {"CELERY_BROKER_URL", "REDIS_URL", "OPENAI_API_KEY", "XAI_API_KEY",
                  "AIECS_SECRET_KEY"}
    seen = set()
    for name, c in containers():
        for env in c.get("env", []):
            if env["name"] in secret_env:
                ref = env["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "aiecs-secrets" and ref["key"] == env["name"], name
                seen.add(env["name"])
        names = {e["name"] for e in c.get("env", [])}
        assert {"CELERY_BROKER_URL", "REDIS_URL"} <= names, name
    assert seen == secret_env
    assert "Secret" not in {d["kind"] for d in k8s_docs()}  # created by you (README)


def test_pods_run_locked_down():
    for name, deployment in of_kind("Deployment").items():
        spec = deployment["spec"]["template"]["spec"]
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] == "aiecs", name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        mounts: set = set()
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert ":" in c["image"] and c["image"] == f"aiecs:{worker_version()}", name
            mounts.update((m["mountPath"], m["name"]) for m in c["volumeMounts"])
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert ("/tmp", "tmp") in mounts and "emptyDir" in volumes["tmp"], name
    namespace = of_kind("Namespace")["aiecs"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert of_kind("ServiceAccount")["aiecs"]["automountServiceAccountToken"] is False
    assert {d["metadata"].get("namespace") for d in k8s_docs() if d["kind"] != "Namespace"} == {
        "aiecs"}


def _selects(policy: dict, labels: dict) -> bool:
    return policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


def test_network_policies_deny_by_default_and_admit_what_is_needed():
    policies = list(of_kind("NetworkPolicy").values())
    deny = of_kind("NetworkPolicy")["aiecs-default-deny"]["spec"]
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    for name, deployment in of_kind("Deployment").items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert _selects(of_kind("NetworkPolicy")["aiecs-default-deny"], labels), name
        egress_ports = {p["port"] for pol in policies if _selects(pol, labels)
                        for rule in pol["spec"].get("egress", []) for p in rule["ports"]}
        assert {53, 6379} <= egress_ports, name  # DNS and Redis
        assert (443 in egress_ports) == (name in WORKERS), name  # only workers call out
        ingress_ports = {p["port"] for pol in policies if _selects(pol, labels)
                         for rule in pol["spec"].get("ingress", []) for p in rule["ports"]}
        served = {p["containerPort"] for c in deployment["spec"]["template"]["spec"][
            "containers"] for p in c.get("ports", [])}
        assert ingress_ports == served, name  # what a pod serves, and nothing else


def test_ingress_carries_websockets_to_the_server():
    ingress = of_kind("Ingress")["aiecs-server"]
    notes = ingress["metadata"]["annotations"]
    # Socket.IO pings every 25 s: nginx's 60 s default would be enough for a live socket,
    # not for one whose client is slow; long-lived sockets need long timeouts both ways
    for name in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(notes[f"nginx.ingress.kubernetes.io/{name}"]) >= 3600, name
    assert notes["nginx.ingress.kubernetes.io/proxy-http-version"] == "1.1"  # Upgrade
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"  # long-polling
    assert ingress["spec"]["tls"]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = of_kind("Service")[backend["name"]]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}
    body = int(notes["nginx.ingress.kubernetes.io/proxy-body-size"].removesuffix("m"))
    from aiecs_worker.server.settings import ServerSettings

    largest = ServerSettings.model_fields["aiecs_max_group_body_bytes"].default
    assert body * 2**20 >= largest  # nginx does not refuse what the server accepts


# -- autoscaling on the real lists --------------------------------------------------------------
def scaled_lists(deployment: str) -> list[str]:
    scaled = of_kind("ScaledObject")[deployment]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis"}
    formula = scaled["spec"]["advanced"]["scalingModifiers"]["formula"]
    assert sorted(formula.replace(" ", "").split("+")) == sorted(t["name"] for t in triggers)
    return [t["metadata"]["listName"] for t in triggers]


def test_scaled_objects_read_every_priority_list_kombu_uses():
    """The list names are kombu's own: one per priority step of its Redis transport."""
    from kombu.transport.redis import Channel

    for deployment in WORKERS:
        container = pod_spec(deployment)["containers"][0]
        queue = option(container["command"], "-Q")
        steps = Channel.priority_steps
        expected = {queue if p == 0 else f"{queue}{Channel.sep}{p}" for p in steps}
        assert set(scaled_lists(deployment)) == expected, deployment
        assert pod_spec(deployment) and of_kind("Deployment")[deployment]["spec"][
            "replicas"] == of_kind("ScaledObject")[deployment]["spec"]["minReplicaCount"]


def test_scaled_lists_count_the_messages_really_waiting(redis_server):
    """Messages published as aiecs publishes them (its queues, its routes' priorities) and
    at every other priority, into a real Redis: the ScaledObject's lists hold them all,
    where LLEN of the queue's name alone misses those aiecs sends."""
    import redis
    from aiecs_worker.app import app
    from aiecs_worker.routing import route
    from kombu import Connection

    queues = {q.name: q for q in app.conf.task_queues}
    client = redis.Redis.from_url(redis_server.url)
    try:
        with Connection(redis_server.url) as conn:
            producer = conn.Producer()
            for deployment, heavy in (("aiecs-worker-fast", False),
                                      ("aiecs-worker-heavy", True)):
                r = route(heavy)
                queue = queues[r.queue]
                for priority in [r.priority] * 5 + list(range(10)):
                    producer.publish({"n": priority}, exchange=queue.exchange,
                                     routing_key=queue.routing_key, declare=[queue],
                                     priority=priority)
                lists = scaled_lists(deployment)
                assert sum(client.llen(name) for name in lists) == 15, deployment
                assert client.llen(r.queue) < 15 - 5  # the queue's own name misses them
                keys = {k.decode() for k in client.keys(f"{r.queue}*")}
                assert keys <= set(lists), deployment  # no list the scaler does not read
    finally:
        client.close()


def test_scaled_objects_authenticate_from_the_secret():
    auth = of_kind("TriggerAuthentication")["aiecs-broker"]
    refs = {r["parameter"]: r for r in auth["spec"]["secretTargetRef"]}
    assert set(refs) == {"address", "password"}
    assert {r["name"] for r in refs.values()} == {"aiecs-secrets"}
    readme = (ROOT / "README.md").read_text()
    for ref in refs.values():
        assert ref["key"] in readme, ref["key"]  # the Secret's keys are documented
    for scaled in of_kind("ScaledObject").values():
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["authenticationRef"]["name"] == "aiecs-broker"
            assert "password" not in trigger["metadata"]
