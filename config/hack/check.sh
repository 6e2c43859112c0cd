#!/usr/bin/env bash
# Checks config/ offline: every kustomization renders, every rendered object validates against the
# Kubernetes schemas (NautilusMasters against the CRD's own schema), and the Argo CD health check
# passes its tests under a real Lua 5.1. Run from anywhere; .ci/run runs it.
# Installs what it needs: a venv in target/config-venv (pinned in requirements.txt, reused while
# that file is unchanged) and Debian's lua5.1 (as root, when missing). Needs kubectl.
set -euo pipefail
cd "$(dirname "$0")/../.."

command -v kubectl >/dev/null || { echo "config checks need kubectl (with its built-in kustomize)" >&2; exit 1; }

venv=target/config-venv
stamp="$venv/requirements.sha256"
want="$(sha256sum < config/hack/requirements.txt)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing config/hack/requirements.txt into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-input -r config/hack/requirements.txt
  echo "$want" > "$stamp"
fi

if ! command -v lua5.1 >/dev/null; then
  echo "installing lua5.1 (Debian)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends lua5.1 >/dev/null
fi

out=target/config-rendered
rm -rf "$out" && mkdir -p "$out"
for kustomization in crd rbac manager samples default; do
  kubectl kustomize "config/$kustomization" > "$out/$kustomization.yaml"
  echo "rendered config/$kustomization: $(grep -c '^kind:' "$out/$kustomization.yaml") objects"
done

health=config/argocd/nautilus.k3s-daas.io/NautilusMaster
"$venv/bin/python" config/hack/validate.py --crd crds/nautilusmaster.yaml \
  --kubernetes-version 1.33 --kubernetes-version 1.37 \
  "$out"/*.yaml config/argocd/application.yaml \
  $(for f in "$health"/testdata/*.yaml; do printf -- '--status-only %s ' "$f"; done)

"$venv/bin/python" config/hack/argocd_health_test.py "$health" --rust-conditions crds/src/conditions.rs
