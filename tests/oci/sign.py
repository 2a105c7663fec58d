"""The oracle for request signing: the official `oci` Python SDK signs the requests it is
given, and prints the headers it set, one JSON object per request.

Input (stdin, JSON): {"key_file": PATH, "pass_phrase": STR|null, and either
"token": STR (SecurityTokenSigner, keyId ST$<token>) or "tenancy", "user", "fingerprint"
(Signer, an API key); "requests": [{"method", "url", "date", "body": base64|null}]}.
"""

import base64
import json
import sys

from oci._vendor import requests
from oci.auth.signers import SecurityTokenSigner
from oci.signer import Signer, load_private_key_from_file


def signer(spec):
    if spec.get("token") is not None:
        key = load_private_key_from_file(spec["key_file"], spec.get("pass_phrase"))
        return SecurityTokenSigner(spec["token"], key)
    return Signer(
        tenancy=spec["tenancy"],
        user=spec["user"],
        fingerprint=spec["fingerprint"],
        private_key_file_location=spec["key_file"],
        pass_phrase=spec.get("pass_phrase"),
    )


def main():
    spec = json.load(sys.stdin)
    sign = signer(spec)
    out = []
    for r in spec["requests"]:
        body = base64.b64decode(r["body"]) if r.get("body") is not None else None
        request = requests.Request(
            r["method"], r["url"], headers={"date": r["date"]}, data=body
        ).prepare()
        sign(request)
        out.append({k.lower(): v for k, v in request.headers.items()})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
