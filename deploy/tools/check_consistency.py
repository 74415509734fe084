"""Cross-checks between the Dockerfile, docker-compose.yaml, the rendered Kubernetes manifests, the
configuration files and pyproject.toml: the facts that no single linter sees.

    .venv/bin/python deploy/tools/check_consistency.py RENDERED_DIR

RENDERED_DIR holds one `<name>.yaml` per rendered kustomization (scripts/check_deploy.sh writes
them with `kubectl kustomize`). Runs with the project's own virtualenv, because the configuration
files (and the ConfigMaps' config.yaml) are loaded with the proxy's own loader
(`proxy.config.load_config`). Exit status 1 when a check fails.
"""

from __future__ import annotations

import re
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from proxy.config import ConfigError, load_config  # noqa: E402
from tests.deploy.dockerfile import Stage, parse  # noqa: E402

DEPLOY = REPO / "deploy"
#: The proxy's shutdown deadline when the configuration has no server.shutdown_timeout yet.
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
PROXY_CONTAINER = "proxy"

failures: list[str] = []


def check(condition: bool, message: str) -> None:
    if not condition:
        failures.append(message)


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def project_version() -> str:
    version: str = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    return version


# --- configuration files ------------------------------------------------------------------------------


def env_names(node: object) -> Iterator[str]:
    """Environment variable names a configuration refers to (`*_env` keys), to give them dummy values."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str) and key.endswith("_env") and isinstance(value, str):
                yield value
            yield from env_names(value)
    elif isinstance(node, list):
        for item in node:
            yield from env_names(item)


def check_config(label: str, text: str) -> dict[str, Any]:
    data = yaml.safe_load(text) or {}
    # Only what every deployment here provides (the upstream key, from a Secret or the shell) and the
    # variables the file itself names, with dummy values: the caller's environment must not matter.
    environ = {name: f"dummy-{name.lower()}-for-check" for name in ["ANTHROPIC_API_KEY", *env_names(data)]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(text)
        try:
            load_config(path, environ=environ)
        except ConfigError as exc:
            failures.append(f"{label}: the proxy rejects this configuration: {exc}")
    return data if isinstance(data, dict) else {}


def check_configs(rendered: dict[str, list[dict[str, Any]]]) -> None:
    files = [DEPLOY / "config" / "container.yaml", *sorted((DEPLOY / "kubernetes").rglob("config.yaml"))]
    for path in files:
        check_config(str(path.relative_to(REPO)), path.read_text())
    for name, docs in rendered.items():
        for doc in docs:
            if doc["kind"] == "ConfigMap" and "config.yaml" in doc.get("data", {}):
                check_config(
                    f"rendered {name}: ConfigMap {doc['metadata']['name']}", doc["data"]["config.yaml"]
                )


# --- Dockerfile ----------------------------------------------------------------------------------------


def check_dockerfile() -> Stage:
    stages = parse((DEPLOY / "Dockerfile").read_text(), {"PATH": "/usr/local/bin:/usr/bin:/bin"})
    version = project_version()
    for stage in stages:
        check(
            stage.args.get("VERSION") == version, f"Dockerfile stage {stage.name}: ARG VERSION != {version}"
        )
    bases = {stage.base for stage in stages}
    check(len(bases) == 1, f"Dockerfile: the stages use different base images {sorted(bases)}")
    check(
        all(re.search(r":\d+\.\d+\.\d+-", base) for base in bases),
        f"Dockerfile: pin the base by full tag: {bases}",
    )
    final = stages[-1]
    check(bool(final.user) and final.user.split(":")[0].isdigit(), "Dockerfile: USER must be a numeric uid")
    allowed = [
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for stage in stages:
        for flags, sources, _ in stage.copies:
            for source in sources if "from" not in flags else []:
                check((REPO / source).exists(), f"Dockerfile: COPY {source}: no such file in the repository")
                check(
                    any(source.rstrip("/") == a or source.startswith(a + "/") for a in allowed),
                    f"Dockerfile: COPY {source} is excluded from the build context by .dockerignore",
                )
    return final


def image_uid(final: Stage) -> int:
    return int((final.user or "0").split(":")[0])


# --- docker compose --------------------------------------------------------------------------------------


def check_compose(final: Stage) -> None:
    compose = documents(DEPLOY / "docker-compose.yaml")[0]
    services: dict[str, dict[str, Any]] = compose["services"]
    version = project_version()
    profiles = {name: set(service.get("profiles", [])) for name, service in services.items()}
    for name, service in services.items():
        check(
            bool(profiles[name]),
            f"compose: service {name} has no profile (it would start with every profile)",
        )
        targets = list(service.get("depends_on", {}))
        mode = service.get("network_mode", "")
        if mode.startswith("service:"):
            targets.append(mode.removeprefix("service:"))
        for target in targets:
            check(target in services, f"compose: {name} refers to an unknown service {target}")
            check(
                profiles[name] <= profiles.get(target, set()),
                f"compose: {name} needs {target}, which is not in all of its profiles",
            )
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                check((DEPLOY / source).exists(), f"compose: {name} mounts {source}, which does not exist")
        if "build" in service:
            build = service["build"]
            check(
                (DEPLOY / build["context"] / build["dockerfile"]).is_file(),
                f"compose: {name} builds from a missing Dockerfile",
            )
            check(
                build.get("args", {}).get("VERSION") == version,
                f"compose: {name} build arg VERSION != {version}",
            )
            check(
                str(service.get("image", "")).endswith(f":{version}"),
                f"compose: {name} image tag != {version}",
            )
            check("user" not in service, f"compose: {name} must run as the image's USER {final.user}")
            check(
                service.get("read_only") is True, f"compose: {name} should have a read-only root filesystem"
            )
            grace = service.get("stop_grace_period", "10s")
            check(seconds(grace) > shutdown_timeout(), f"compose: {name} stop_grace_period {grace} too short")


def seconds(duration: str | int) -> float:
    if isinstance(duration, int):
        return float(duration)
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


def shutdown_timeout() -> float:
    """How long the proxy may take to stop after SIGTERM: server.shutdown_timeout's default plus the
    grace it leaves for the in-band endings of cut streams (proxy.server._CLOSE_GRACE)."""
    import proxy.server
    from proxy.config import ServerConfig

    field = ServerConfig.model_fields.get("shutdown_timeout")
    deadline = float(field.default) if field is not None else DEFAULT_SHUTDOWN_TIMEOUT
    return deadline + float(getattr(proxy.server, "_CLOSE_GRACE", 0.0))


# --- Kubernetes ------------------------------------------------------------------------------------------


def probe_paths(container: dict[str, Any], probe: str) -> str:
    spec = container.get(probe) or {}
    if "httpGet" in spec:
        return str(spec["httpGet"].get("path"))
    return " ".join(spec.get("exec", {}).get("command", []))


def check_kubernetes(final: Stage, rendered: dict[str, list[dict[str, Any]]]) -> None:
    version = project_version()
    uid = image_uid(final)
    config_path = final.cmd[final.cmd.index("--config") + 1] if final.cmd and "--config" in final.cmd else ""
    port = int(final.env.get("PROXY_SERVER__PORT", "0"))
    secrets = {
        doc["metadata"]["name"]: set(doc.get("stringData", {}))
        for doc in documents(DEPLOY / "kubernetes" / "examples" / "secret.example.yaml")
    }
    for name, docs in rendered.items():
        kinds = {doc["kind"] for doc in docs}
        for doc in docs:
            where = f"{name}: {doc['kind']} {doc['metadata']['name']}"
            if doc["kind"] == "Deployment":
                check_pod(
                    where, doc["spec"]["template"]["spec"], final, uid, config_path, port, version, secrets
                )
            if doc["kind"] == "NetworkPolicy":
                egress_ports = {
                    p.get("port") for rule in doc["spec"].get("egress", []) for p in rule.get("ports", [])
                }
                check(
                    {53, 443} <= egress_ports, f"{where}: egress must allow DNS (53) and the upstream (443)"
                )
                check(
                    egress_ports <= {53, 443, 6379},
                    f"{where}: unexpected egress ports {sorted(egress_ports)}",
                )
                rules = doc["spec"].get("egress", [])
                check(
                    all(rule.get("ports") for rule in rules),
                    f"{where}: every egress rule must name its ports",
                )
                if name == "team":
                    check(6379 in egress_ports, f"{where}: the team overlay must allow Redis (6379)")
            if doc["kind"] == "ServiceMonitor":
                check_service_monitor(where, doc, docs)
        if name == "team":
            wanted = {
                "Deployment",
                "Service",
                "HorizontalPodAutoscaler",
                "PodDisruptionBudget",
                "NetworkPolicy",
                "ServiceMonitor",
            }
            check(wanted <= kinds, f"{name}: missing {sorted(wanted - kinds)}")


def check_service_monitor(where: str, monitor: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    """No schema validator knows the Prometheus Operator's CRD: check that it scrapes /metrics through a
    named port of a Service of the same render (kubernetes-validate skips the kind)."""
    check(
        monitor.get("apiVersion") == "monitoring.coreos.com/v1",
        f"{where}: apiVersion monitoring.coreos.com/v1",
    )
    wanted = monitor["spec"].get("selector", {}).get("matchLabels", {})
    services = [
        doc
        for doc in docs
        if doc["kind"] == "Service" and wanted and wanted.items() <= doc["metadata"].get("labels", {}).items()
    ]
    check(len(services) == 1, f"{where}: selects {len(services)} Services by its matchLabels, not one")
    ports = {port.get("name") for service in services for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"].get("endpoints", []):
        check(
            endpoint.get("port") in ports,
            f"{where}: endpoint port {endpoint.get('port')} is not a Service port",
        )
        check(endpoint.get("path") == "/metrics", f"{where}: endpoint path must be /metrics")
    check(bool(monitor["spec"].get("endpoints")), f"{where}: no endpoints")


def check_pod(
    where: str,
    pod: dict[str, Any],
    final: Stage,
    uid: int,
    config_path: str,
    port: int,
    version: str,
    secrets: dict[str, set[str]],
) -> None:
    grace = pod.get("terminationGracePeriodSeconds", 30)
    proxies = [c for c in pod["containers"] if c["name"] == PROXY_CONTAINER]
    check(len(proxies) == 1, f"{where}: expected one container named {PROXY_CONTAINER}")
    if not proxies:
        return
    proxy = proxies[0]
    pre_stop = proxy.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    check(
        grace > shutdown_timeout() + pre_stop,
        f"{where}: terminationGracePeriodSeconds {grace} must exceed the shutdown deadline "
        f"{shutdown_timeout()} s + preStop {pre_stop} s",
    )
    check(
        proxy["image"].endswith(f":{version}") or f":{version}@sha256:" in proxy["image"],
        f"{where}: image tag != {version}",
    )
    check(
        proxy.get("args") == final.cmd,
        f"{where}: args {proxy.get('args')} differ from the image's CMD {final.cmd}",
    )
    security = {**pod.get("securityContext", {}), **proxy.get("securityContext", {})}
    check(security.get("runAsUser") == uid, f"{where}: runAsUser must be the image's USER {uid}")
    check(security.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    check(security.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(security.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drop ALL capabilities")
    check(
        security.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault"
    )
    ports = [p["containerPort"] for p in proxy.get("ports", [])]
    check(ports == [port], f"{where}: containerPort {ports} != the image's port {port}")
    mounts = {m["mountPath"]: m for m in proxy.get("volumeMounts", [])}
    check(
        str(Path(config_path).parent) in mounts,
        f"{where}: the config directory of {config_path} is not mounted",
    )
    check("/tmp" in mounts, f"{where}: /tmp must be a writable volume (read-only root filesystem)")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    tmp = volumes.get(mounts.get("/tmp", {}).get("name", ""), {})
    check("emptyDir" in tmp, f"{where}: /tmp must be an emptyDir")
    check("/healthz" in probe_paths(proxy, "livenessProbe"), f"{where}: liveness must check /healthz")
    check("/readyz" in probe_paths(proxy, "readinessProbe"), f"{where}: readiness must check /readyz")
    for container in pod["containers"]:
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            check(
                {"cpu", "memory"} <= set(resources.get(kind, {})),
                f"{where}: container {container['name']} needs cpu and memory {kind}",
            )
    for env in proxy.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            check(
                ref["key"] in secrets.get(ref["name"], set()),
                f"{where}: secret {ref['name']}/{ref['key']} is not in examples/secret.example.yaml",
            )


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    rendered = {path.stem: documents(path) for path in sorted(Path(sys.argv[1]).glob("*.yaml"))}
    check(bool(rendered), f"no rendered manifests in {sys.argv[1]}")
    final = check_dockerfile()
    check_compose(final)
    check_kubernetes(final, rendered)
    check_configs(rendered)
    for failure in failures:
        print(f"  FAIL: {failure}")
    print(f"consistency: {len(failures)} problems; renders checked: {', '.join(sorted(rendered))}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
