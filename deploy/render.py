#!/usr/bin/env python3
"""Renders the chart with deploy/helmlite.py, a stand-in for `helm template`
where no helm binary exists:

    .venv/bin/python deploy/render.py [--set key=value]... [--release NAME]

prints the manifests as one YAML stream (hooks and the test Pod included).

    .venv/bin/python deploy/render.py --server-env [--set ...]

prints, as JSON, what the server container and the migration Job get: the
config file the ConfigMap holds and each container's (the helm test Pod's
too) command and environment
(secret references as {"secret": NAME, "key": KEY}). With --write-dir DIR
it writes the same as files instead: config.yaml, server.env and migrate.env
(NAME=VALUE lines; a secret reference as NAME=@secret:NAME:KEY), the helm
test Pod's autotest.env and autotest.args (one argument a line), migrate.sh
(the Job's script) and timing.env (PRE_STOP_SECONDS, GRACE_SECONDS). The test
crates/autotest/tests/chart_config.rs starts a real server that way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import helmlite  # noqa: E402

CHART = Path(__file__).resolve().parent / "helm" / "next-chat"


def env_of(container: dict) -> list[dict]:
    out = []
    for env in container.get("env", []):
        if "value" in env:
            out.append({"name": env["name"], "value": env["value"]})
        else:
            ref = env["valueFrom"]["secretKeyRef"]
            out.append({"name": env["name"], "secret": ref["name"], "key": ref["key"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--release", default="chat")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--server-env", action="store_true")
    parser.add_argument("--write-dir", type=Path)
    args = parser.parse_args()
    overrides: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        helmlite.set_path(overrides, key, yaml.safe_load(value))
    chart = helmlite.Chart(CHART)
    try:
        rendered = chart.render(overrides, release=args.release, namespace=args.namespace)
    except helmlite.RenderError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    if not args.server_env and not args.write_dir:
        for name, text in rendered.items():
            if not name.endswith("NOTES.txt") and text.strip():
                print(f"---\n# Source: {name}\n{text.strip()}")
        return 0
    docs = [d for name, text in rendered.items() if not name.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    configmap = next(d for d in docs if d["kind"] == "ConfigMap")
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    result = {
        "config_yaml": configmap["data"]["config.yaml"],
        "config_mount": server["volumeMounts"][0]["mountPath"],
        "server": {"command": server.get("command", []), "args": server.get("args", []), "env": env_of(server)},
        "pre_stop": server["lifecycle"]["preStop"]["exec"]["command"],
        "termination_grace_period_seconds": deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
    }
    test_pod = next(d for d in docs if d["kind"] == "Pod" and d["metadata"]["name"].endswith("-autotest"))
    autotest = test_pod["spec"]["containers"][0]
    result["autotest"] = {"command": autotest["command"], "args": autotest["args"], "env": env_of(autotest)}
    job = next((d for d in docs if d["kind"] == "Job"), None)
    if job:
        migrate = job["spec"]["template"]["spec"]["containers"][0]
        result["migrate"] = {"command": migrate["command"], "args": migrate["args"], "env": env_of(migrate)}
    if args.write_dir:
        write_dir(args.write_dir, result)
    else:
        print(json.dumps(result, indent=2))
    return 0


def write_dir(out: Path, result: dict) -> None:
    def env_lines(env: list[dict]) -> str:
        return "".join(
            f"{e['name']}={e['value']}\n" if "value" in e else f"{e['name']}=@secret:{e['secret']}:{e['key']}\n"
            for e in env)

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(result["config_yaml"])
    (out / "server.env").write_text(env_lines(result["server"]["env"]))
    (out / "autotest.env").write_text(env_lines(result["autotest"]["env"]))
    (out / "autotest.args").write_text("".join(f"{arg}\n" for arg in result["autotest"]["args"]))
    if "migrate" in result:
        (out / "migrate.env").write_text(env_lines(result["migrate"]["env"]))
        (out / "migrate.sh").write_text(result["migrate"]["args"][0])
    pre_stop = result["pre_stop"]
    assert pre_stop[0] == "sleep", pre_stop
    (out / "timing.env").write_text(
        f"PRE_STOP_SECONDS={pre_stop[1]}\nGRACE_SECONDS={result['termination_grace_period_seconds']}\n")


if __name__ == "__main__":
    sys.exit(main())
