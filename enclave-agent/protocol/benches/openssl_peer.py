#!/usr/bin/env python3
"""An independent verifier of AWS Nitro attestation documents on OpenSSL, for comparison.

It checks a document the way `nautilus_protocol::Verifier` does, with other code: `cbor2`
decodes the COSE_Sign1 and its payload, `cryptography` (OpenSSL) checks every signature.

  1. COSE_Sign1 (untagged or tag 18), protected header {1: -35} (ES384), a payload;
  2. cabundle[0] equal, byte for byte, to the pinned AWS Nitro root G1;
  3. every certificate valid at the verification time, each one's issuer name equal to the
     previous one's subject, ecdsa-with-SHA384 by the previous one's P-384 key, CA=true on the
     CA certificates, not a CA at the leaf;
  4. the ES384 signature (raw r||s) with the leaf key over
     Sig_structure = ["Signature1", protected, h'', payload].

Modes, timed per document over at least --seconds:
  cold  everything above, every time (what the Rust "cold" case does);
  warm  certificate signatures remembered by (issuer SPKI DER, certificate DER) as the Rust
        cache does; names, validity and the COSE signature checked every time.

Requires: pip install cbor2 cryptography   (not part of the default test run)
Usage:    openssl_peer.py DOCUMENT [--root ROOT_PEM] [--at-ms MS] [--seconds S]
Prints one JSON line per mode.
"""

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone

import cbor2
import cryptography
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.backends.openssl import backend
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature


class Refused(Exception):
    pass


def spki_der(cert):
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def verify(document, root_der, at, cache=None):
    """Return the payload map if `document` verifies at `at` (aware datetime), else raise."""
    value = cbor2.loads(document)
    if isinstance(value, cbor2.CBORTag):
        if value.tag != 18:
            raise Refused("tag")
        value = value.value
    if not isinstance(value, list) or len(value) != 4:
        raise Refused("not cose_sign1")
    protected, _unprotected, payload, signature = value
    if cbor2.loads(protected) != {1: -35}:
        raise Refused("not es384")
    if not isinstance(payload, bytes):
        raise Refused("no payload")
    fields = cbor2.loads(payload)
    cabundle, leaf = fields["cabundle"], fields["certificate"]
    if not cabundle or cabundle[0] != root_der:
        raise Refused("untrusted root")

    ders = list(cabundle) + [leaf]
    certs = [x509.load_der_x509_certificate(der) for der in ders]
    for index, cert in enumerate(certs):
        if not (cert.not_valid_before_utc <= at <= cert.not_valid_after_utc):
            raise Refused(f"certificate {index} not valid at {at}")
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if ca != (index < len(certs) - 1):
            raise Refused(f"certificate {index} ca flag")
        if not isinstance(cert.public_key(), ec.EllipticCurvePublicKey) or not isinstance(
            cert.public_key().curve, ec.SECP384R1
        ):
            raise Refused(f"certificate {index} key")
        if index == 0:
            continue  # pinned by its bytes
        parent = certs[index - 1]
        if cert.issuer != parent.subject:
            raise Refused(f"certificate {index} issuer")
        if cert.signature_algorithm_oid != x509.SignatureAlgorithmOID.ECDSA_WITH_SHA384:
            raise Refused(f"certificate {index} algorithm")
        key = (spki_der(parent), ders[index]) if cache is not None else None
        if key is not None and key in cache:
            continue
        try:
            parent.public_key().verify(
                cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA384())
            )
        except InvalidSignature:
            raise Refused(f"certificate {index} signature")
        if key is not None:
            cache.add(key)

    if not isinstance(signature, bytes) or len(signature) != 96:
        raise Refused("signature length")
    r = int.from_bytes(signature[:48], "big")
    s = int.from_bytes(signature[48:], "big")
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    try:
        certs[-1].public_key().verify(
            encode_dss_signature(r, s), to_be_signed, ec.ECDSA(hashes.SHA384())
        )
    except InvalidSignature:
        raise Refused("cose signature")
    return fields


def measure(document, root_der, at, seconds, warm):
    cache = set() if warm else None
    verify(document, root_der, at, cache)  # warms the cache in warm mode, checks validity
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 100:
        start = time.perf_counter()
        verify(document, root_der, at, cache)
        samples.append(time.perf_counter() - start)
    return samples


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("document")
    parser.add_argument(
        "--root", help="root certificate PEM (default: aws-nitro-root-g1.pem beside the document)"
    )
    parser.add_argument(
        "--at-ms", type=int, help="verification time (default: the document's timestamp)"
    )
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    with open(args.document, "rb") as f:
        document = f.read()
    root_path = args.root or args.document.rsplit("/", 1)[0] + "/aws-nitro-root-g1.pem"
    with open(root_path, "rb") as f:
        root = x509.load_pem_x509_certificate(f.read())
    root_der = root.public_bytes(serialization.Encoding.DER)

    at_ms = args.at_ms
    if at_ms is None:
        # Read the timestamp from the payload; `verify` then checks everything else.
        value = cbor2.loads(document)
        value = value.value if isinstance(value, cbor2.CBORTag) else value
        at_ms = cbor2.loads(value[2])["timestamp"]
    at = datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc)

    for mode in ("cold", "warm"):
        samples = measure(document, root_der, at, args.seconds, mode == "warm")
        print(
            json.dumps(
                {
                    "verifier": "python cbor2 + cryptography",
                    "openssl": backend.openssl_version_text(),
                    "cryptography": cryptography.__version__,
                    "python": sys.version.split()[0],
                    "mode": mode,
                    "document": args.document.rsplit("/", 1)[-1],
                    "iterations": len(samples),
                    "median_ms": round(statistics.median(samples) * 1000, 4),
                    "mean_ms": round(statistics.fmean(samples) * 1000, 4),
                    "min_ms": round(min(samples) * 1000, 4),
                }
            )
        )


if __name__ == "__main__":
    try:
        main()
    except Refused as refused:
        print(f"refused: {refused}", file=sys.stderr)
        sys.exit(1)
