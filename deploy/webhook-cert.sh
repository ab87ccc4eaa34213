#!/usr/bin/env bash
# Makes a CA and a serving certificate for the rvs-webhook Service, stores them in Secret
# rvs-system/rvs-webhook-tls and puts the CA in the ValidatingWebhookConfiguration's caBundle.
# Run after applying 40-webhook.yaml (and again after every re-apply of it: that empties
# caBundle). Each run makes a new CA; running webhook pods are restarted to load the new cert.
# Needs: openssl, kubectl with access to the cluster. KUBECTL overrides the kubectl command.
set -euo pipefail

namespace=rvs-system
service=rvs-webhook
secret=rvs-webhook-tls
vwc=rvs-validate-ingress
days=${DAYS:-825}
kubectl=${KUBECTL:-kubectl}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# openssl reports progress on stderr: show it only when a step fails.
quiet() { "$@" 2>"$tmp/err" || { cat "$tmp/err" >&2; return 1; }; }

# Fail before making anything if the webhook configuration is not there to patch.
"$kubectl" get validatingwebhookconfiguration "$vwc" >/dev/null

quiet openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
  -keyout "$tmp/ca.key" -out "$tmp/ca.crt" \
  -subj "/CN=rvs-webhook-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign"

quiet openssl req -newkey rsa:2048 -nodes -sha256 \
  -keyout "$tmp/tls.key" -out "$tmp/tls.csr" \
  -subj "/CN=$service.$namespace.svc"

# The API server checks the name it dials (service.namespace.svc) against the SANs.
cat >"$tmp/ext.cnf" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:$service,DNS:$service.$namespace,DNS:$service.$namespace.svc
EXT

quiet openssl x509 -req -sha256 -days "$days" -in "$tmp/tls.csr" \
  -CA "$tmp/ca.crt" -CAkey "$tmp/ca.key" -CAcreateserial -CAserial "$tmp/ca.srl" \
  -extfile "$tmp/ext.cnf" -out "$tmp/tls.crt"

quiet openssl verify -CAfile "$tmp/ca.crt" "$tmp/tls.crt" >/dev/null

# create --dry-run | apply: creates the Secret or updates it in place.
"$kubectl" -n "$namespace" create secret tls "$secret" \
  --cert="$tmp/tls.crt" --key="$tmp/tls.key" --dry-run=client -o yaml |
  "$kubectl" apply -f -

# "add" rather than "replace": an empty caBundle is not stored, so the path may not exist.
ca_bundle=$(base64 <"$tmp/ca.crt" | tr -d '\n')
"$kubectl" patch validatingwebhookconfiguration "$vwc" --type=json \
  -p "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"$ca_bundle\"}]"

# Pods already running serve the old certificate until they restart.
if "$kubectl" -n "$namespace" get deployment "$service" >/dev/null 2>&1; then
  "$kubectl" -n "$namespace" rollout restart deployment "$service"
  "$kubectl" -n "$namespace" rollout status deployment "$service" --timeout=120s
fi
