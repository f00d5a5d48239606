#!/usr/bin/env python3
"""What the schemas cannot know about deploy/k8s: Circle's own rules.

kubernetes-validate checks the manifests against Kubernetes' schemas; this checks
that they run Circle the way deploy/README.md says (settings keys Circle accepts,
secrets only by reference, replicas, probes, budget, limits, non-root).
Needs PyYAML (a dependency of kubernetes-validate) and Python 3.11's tomllib.
"""

import pathlib
import sys
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy/k8s"
SECRETS = {"CIRCLE_MASTER_KEY", "CIRCLE_DATABASE_URL", "CIRCLE_ADMIN_TOKEN", "CIRCLE_AUDIT_SIGNING_KEY"}
SETTINGS_ENV = SECRETS | {"CIRCLE_LISTEN", "CIRCLE_NATS_URL", "CIRCLE_CONFIG"}
# Settings whose value is a secret: never in a ConfigMap.
SECRET_KEYS = {"master_key", "admin_token", "database_url", "audit_signing_key"}


def settings_keys():
    """Keys Circle's Settings accept: the defaults plus the ones left unset there."""
    keys = set(tomllib.loads((ROOT / "services/config/defaults.toml").read_text()))
    return keys | {"database_url", "nats_url", "admin_token", "master_key", "audit_signing_key"}


def main():
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    errors = []

    def expect(condition, message):
        if not condition:
            errors.append(message)

    config = tomllib.loads(docs["ConfigMap"]["data"]["circle.toml"])
    unknown = set(config) - settings_keys()
    expect(not unknown, f"circle.toml: Circle rejects unknown keys {sorted(unknown)}")
    expect(not set(config) & SECRET_KEYS, "circle.toml holds a secret setting")

    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    expect(deployment["spec"]["replicas"] == 3, "Deployment: replicas must be 3")
    expect(set(env) <= SETTINGS_ENV, f"env: not Circle settings {sorted(set(env) - SETTINGS_ENV)}")
    for name in SECRETS:
        expect(
            name in env and "secretKeyRef" in env[name].get("valueFrom", {}) and "value" not in env[name],
            f"env {name}: must be a secretKeyRef, never a value",
        )
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    expect(
        str(pathlib.PurePosixPath(env["CIRCLE_CONFIG"]["value"]).parent) in mounts,
        "CIRCLE_CONFIG does not point into a mounted volume",
    )
    expect(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness is not /healthz")
    expect(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness is not /readyz")
    expect("preStop" in container.get("lifecycle", {}), "no preStop drain")
    expect(10 < pod["terminationGracePeriodSeconds"] <= 30, "grace period must cover Circle's 10 s exit")
    expect(container["resources"]["limits"]["memory"] == "512Mi", "memory limit must be 512Mi")
    security = container["securityContext"]
    expect(pod["securityContext"].get("runAsNonRoot") is True, "pod must run as non-root")
    expect(security.get("readOnlyRootFilesystem") is True, "root filesystem must be read-only")
    expect(docs["PodDisruptionBudget"]["spec"].get("minAvailable") == 2, "PDB minAvailable must be 2")
    expect("Secret" not in docs, "a Secret is committed: reference it, never commit values")

    for error in errors:
        print("error: deploy/k8s:", error, file=sys.stderr)
    if not errors:
        print("deploy/k8s follows Circle's rules:", ", ".join(sorted(docs)))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
