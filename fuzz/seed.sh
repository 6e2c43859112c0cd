#!/usr/bin/env bash
# Build the seed corpora of the fuzz targets in fuzz/corpus/<target>/ (not committed).
#
# Real inputs come from the shared test data at run time, never copied into the repository:
# AWS attestation documents (nitro/*.cbor) and Sui signatures made by other implementations
# (sui/personal_message_vectors.json). Seal tokens are minted on the spot with nautilusctl from
# throwaway keys; the rest (frames, boot configurations, HTTP requests) is written here.
#
# Usage: fuzz/seed.sh            (NAUTILUS_TESTDATA overrides ../shared/testdata)
# Needs python3, openssl, and cargo to build nautilusctl in the main workspace.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
testdata="${NAUTILUS_TESTDATA:-$repo/../shared/testdata}"
if [ ! -d "$testdata/nitro" ] || [ ! -f "$testdata/sui/personal_message_vectors.json" ]; then
    echo "seed.sh: no test data at $testdata (set NAUTILUS_TESTDATA)" >&2
    exit 1
fi

# Seal tokens for the audience the targets use, one per key scheme, from fresh keys.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$repo" && cargo build -q -p nautilusctl)
for flag in 0 1 2; do
    python3 -c 'import base64,os,sys; print("[\"%s\"]" % base64.b64encode(bytes([int(sys.argv[1])]) + os.urandom(32)).decode())' "$flag" >"$work/keystore-$flag"
    "$repo/target/debug/nautilusctl" token mint --keystore "$work/keystore-$flag" \
        --audience fuzz/cluster --ttl 15m >"$work/token-$flag"
done

python3 - "$here/corpus" "$testdata" "$work" <<'PY'
import base64, glob, hashlib, json, os, struct, sys

corpus, testdata, work = sys.argv[1:4]
b64 = lambda b: base64.b64encode(b).decode()

def put(target, name, data):
    d = os.path.join(corpus, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def frame(kind, body, chunk=0):
    body = json.dumps(body, separators=(",", ":")).encode()
    return bytes([chunk]) + struct.pack(">HBBI", 1, kind, 0, len(body)) + body

documents = sorted(glob.glob(os.path.join(testdata, "nitro", "*.cbor")))
root_pem = open(os.path.join(testdata, "nitro", "aws-nitro-root-g1.pem")).read()
vectors = json.load(open(os.path.join(testdata, "sui", "personal_message_vectors.json")))["vectors"]
tokens = [open(os.path.join(work, f"token-{i}")).read().strip() for i in range(3)]

# attestation: the documents as they are.
for path in documents:
    put("attestation", os.path.basename(path), open(path, "rb").read())

# sui_signature: len(message) || message || signature.
for i, v in enumerate(vectors):
    message = bytes.fromhex(v["message_hex"])
    signature = base64.b64decode(v["signature_base64"])
    put("sui_signature", f"{i}-{v['scheme']}", bytes([len(message)]) + message + signature)

# seal_token and token_review: clock byte (iat + 1 minute) || input.
for i, token in enumerate(tokens):
    put("seal_token", f"minted-{i}", b"\x01" + token.encode())
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
              "spec": {"token": token, "audiences": ["fuzz/cluster", "https://kubernetes.default.svc"]},
              "status": {"user": {}}}
    put("token_review", f"minted-{i}", b"\x01" + json.dumps(review).encode())
put("token_review", "not-seal", b"\x01" + json.dumps({"apiVersion": "authentication.k8s.io/v1",
    "kind": "TokenReview", "spec": {"token": "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"}}).encode())

# boot_config: configurations as the operator renders them.
config = {
    "cluster": "fuzz/cluster",
    "controlPlane": {"bindAddress": "0.0.0.0", "httpsPort": 6443, "clusterCIDR": "10.42.0.0/16",
                     "serviceCIDR": "10.43.0.0/16", "clusterDNS": "10.43.0.10",
                     "dataDir": "/var/lib/rancher/k3s", "encryptSecrets": True,
                     "tlsMinVersion": "VersionTLS12",
                     "cipherSuites": ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
                     "logLevel": "info", "logFormat": "text"},
    "auth": {"suiRpcURL": "https://fullnode.testnet.sui.io:443", "chainID": None,
             "stakeType": "0x3::staking_pool::StakedSui", "stakeAmountField": None,
             "audience": "fuzz/cluster", "maxTokenLifetimeSeconds": 3600, "stakeCacheTTLSeconds": 60,
             "tiers": [{"name": "admin", "minStakeMist": 200000000000, "groups": ["system:masters"]},
                       {"name": "worker", "minStakeMist": 1000000000, "groups": ["nautilus:workers"]}]},
    "health": {"probeIntervalSeconds": 10, "startupTimeoutSeconds": 300},
}
nonce = b64(hashlib.sha256(b"fuzz").digest())
put("boot_config", "k3s", json.dumps({"config": config, "nonce": nonce}).encode())
kubernetes = json.loads(json.dumps(config))
kubernetes["controlPlane"].update(distribution="kubernetes", bindAddress="127.0.0.1",
                                  serviceCIDR="fd00:43::/112", logLevel="debug", logFormat="json")
zk = next(v["zklogin_requirements"] for v in vectors if "zklogin_requirements" in v)
kubernetes["auth"]["zkLogin"] = {"verifyingKey": "dev", "jwks": [dict(zk["jwk_id"], **zk["jwk"])]}
put("boot_config", "kubernetes-zklogin", json.dumps({"config": kubernetes, "nonce": nonce}, indent=2).encode())

# frame: one frame of each kind, read in chunks of various sizes.
put("frame", "boot", frame(1, {"config": config, "nonce": nonce}, 7))
for i, path in enumerate(documents):
    put("frame", f"attestation-{i}", frame(2, {"document": b64(open(path, "rb").read()),
                                               "servingCaPem": root_pem}, i))
report = {"sequence": 3, "timeUnixMs": 1700000000000, "bootConfigDigest": "0" * 64,
          "components": [{"component": c, "healthy": True, "checkedUnixMs": 1700000000000,
                          "latencyMs": 3, "message": None}
                         for c in ("api-server", "scheduler", "controller-manager")],
          "controlPlane": {"running": True, "pid": 42, "restarts": 0, "startedUnixMs": 1699999990000,
                           "lastExit": None, "startupTimedOut": False}}
put("frame", "report", frame(3, {"report": b64(json.dumps(report).encode()), "signature": b64(bytes(96))}, 3))
put("frame", "nonce", frame(4, {"nonce": nonce}, 15))

# sidecar_http: requests the operator and probes send.
attest = json.dumps({"nonce": nonce}).encode()
put("sidecar_http", "gets", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    b"GET /report HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.0\r\n\r\n")
put("sidecar_http", "attest", b"POST /attest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n" % len(attest) + attest)
put("sidecar_http", "attest-chunked", b"POST /attest HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"%x\r\n" % len(attest) + attest + b"\r\n0\r\n\r\nDELETE /attest HTTP/1.1\r\n\r\n")

# egress: CONNECT requests, allowed and not.
for name, target in [("allowed", "127.0.0.1:1"), ("v6", "[::1]:1"), ("name", "LocalHost:1"),
                     ("denied", "fullnode.testnet.sui.io:443")]:
    put("egress", name, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n\x16\x03\x01" % (target.encode(), target.encode()))
put("egress", "get", b"GET http://127.0.0.1:1/ HTTP/1.1\r\n\r\n")
for name, target in [("kubelet", "127.0.0.7:1"), ("kubelet-v6", "[::1]:1"), ("kubelet-far", "10.213.0.2:10250")]:
    put("egress", name, b"CONNECT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % target.encode())
PY

# kubelet_csr: kubelet-serving requests made by openssl (its own, another node's, extra SANs).
mkdir -p "$here/corpus/kubelet_csr"
for spec in "own|system:node:worker-1|IP:10.213.0.2,DNS:worker-1" \
            "other-ip|system:node:worker-1|IP:10.213.0.9" \
            "other-node|system:node:worker-2|IP:10.213.0.2" \
            "email|system:node:worker-1|IP:10.213.0.2,email:a@b.c,URI:spiffe://x/y"; do
    IFS='|' read -r name cn sans <<<"$spec"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
        -subj "/O=system:nodes/CN=$cn" -addext "subjectAltName=$sans" \
        -out "$here/corpus/kubelet_csr/$name" 2>/dev/null
done
# kms_envelope: CMS EnvelopedData as OpenSSL makes it (streaming BER and DER, RSA-OAEP-SHA256
# and AES-256-CBC as KMS sends them, and OAEP-SHA1 and PKCS#1 v1.5, which are refused).
mkdir -p "$here/corpus/kms_envelope"
kms_tmp=$(mktemp -d)
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$kms_tmp/key.pem" -subj /CN=recipient \
    -days 1 -out "$kms_tmp/cert.pem" 2>/dev/null
head -c 32 /dev/urandom > "$kms_tmp/data.bin"
oaep256="-keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256 -keyopt rsa_mgf1_md:sha256"
for spec in "ber|-stream $oaep256" "der|$oaep256" "oaep-sha1|-keyopt rsa_padding_mode:oaep" "pkcs1|"; do
    IFS='|' read -r name extra <<<"$spec"
    # shellcheck disable=SC2086 # extra is a list of options
    openssl cms -encrypt -binary -in "$kms_tmp/data.bin" -aes-256-cbc -recip "$kms_tmp/cert.pem" \
        -keyid -outform DER -out "$here/corpus/kms_envelope/$name" $extra 2>/dev/null
done
rm -rf "$kms_tmp"
for dir in "$here"/corpus/*/; do
    echo "$(basename "$dir"): $(ls "$dir" | wc -l) seeds"
done
