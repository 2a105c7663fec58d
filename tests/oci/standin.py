"""Stand-ins for the OCI endpoints the agent calls, on loopback, with TLS from a CA of their
own (a certificate for IP 127.0.0.1, as OKE's token exchange has for the API server's
service IP). They verify for real and refuse what OCI would refuse:

* the OKE workload-identity token exchange (POST /resourcePrincipalSessionTokens): takes
  only a service-account token the local control plane issued (checked with a TokenReview
  against its API server) and answers, as OKE does, a quoted base64 of {"token": "ST$<rpst>"};
  the RPST is a JWT signed by the stand-in, with a short lifetime and the pod's session
  public key in its `jwk` claim;
* Notifications' subscription confirmation URL (GET /20181201/subscriptions/{id}/confirmation
  ?token=..., unsigned as OCI's is), logged to DIR/confirmations.jsonl;
* Vault secret bundles (GET /20190301/secretbundles/{id}), Notifications
  (POST /20181201/topics/{id}/messages), DevOps code repositories (GET /20210630/
  repositories/{id}/refs, /commits/{sha}, /archive/content, answered from a real Git
  repository on disk with `git archive`) and Object Storage (GET and HEAD /n/{ns}/b/{b}/o/
  {name}, ListObjects, from a directory): each request's OCI signature is verified against
  the session key its RPST carries, refusing expired or foreign tokens, stale dates, wrong
  hosts, unsigned or altered bodies.

Usage: standin.py --dir DIR --kubeconfig PATH [--exchange-port N] [--services-port N]
[--token-lifetime S]. A restart on the same ports with a new signing key makes every RPST
issued before it invalid (how a 401 is provoked).
Writes DIR/ca.pem and DIR/ports.json ({"exchange": N, "services": N}) once serving; reads
DIR/secrets.json ({id: base64 content}), DIR/topics.json ([ids]) and DIR/devops.json
({repository id: path of a Git repository}) on every request, and serves DIR/buckets/
{namespace}/{bucket}/{object name} as objects;
appends every request's outcome to DIR/requests.jsonl and published messages to
DIR/messages.jsonl.
"""

import argparse
import base64
import subprocess
import urllib.parse
import datetime
import email.utils
import hashlib
import ipaddress
import json
import os
import ssl
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from oci._vendor import requests

MAX_SKEW = 300
BODY_HEADERS = ["content-length", "content-type", "x-content-sha256"]


class Refused(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def make_tls(directory):
    """A CA, and a server certificate it signs for IP 127.0.0.1; the CA goes to ca.pem.
    A restart in the same directory keeps them (clients trust that CA)."""
    chain = os.path.join(directory, "server.pem")
    if os.path.exists(chain):
        return tls_context(chain)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "oci stand-in CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(os.path.join(directory, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(chain, "wb") as f:
        f.write(cert.public_bytes(pem))
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tls_context(chain)


def tls_context(chain):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(chain)
    return context


class Apiserver:
    """TokenReview against the local control plane, with the admin kubeconfig's credentials."""

    def __init__(self, kubeconfig):
        with open(kubeconfig) as f:
            kc = yaml.safe_load(f)
        cluster = kc["clusters"][0]["cluster"]
        user = kc["users"][0]["user"]
        self.server = cluster["server"]
        self.files = tempfile.mkdtemp()
        def write(name, data):
            path = os.path.join(self.files, name)
            with open(path, "wb") as f:
                f.write(base64.b64decode(data))
            return path
        self.ca = write("ca.crt", cluster["certificate-authority-data"])
        self.cert = (write("tls.crt", user["client-certificate-data"]), write("tls.key", user["client-key-data"]))

    def review(self, token):
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        r = requests.post(
            self.server + "/apis/authentication.k8s.io/v1/tokenreviews",
            json=body, verify=self.ca, cert=self.cert, timeout=10,
        )
        r.raise_for_status()
        return r.json().get("status", {})


class State:
    def __init__(self, args):
        self.dir = args.dir
        self.lifetime = args.token_lifetime
        self.apiserver = Apiserver(args.kubeconfig)
        self.signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.lock = threading.Lock()
        self.services_host = None
        self.engine = ContainerEngine(self)

    def log(self, name, entry):
        with self.lock, open(os.path.join(self.dir, name), "a") as f:
            f.write(json.dumps(entry) + "\n")

    def read(self, name, default):
        try:
            with open(os.path.join(self.dir, name)) as f:
                return json.load(f)
        except FileNotFoundError:
            return default

    def rpst(self, user, pod_key):
        now = int(time.time())
        public = serialization.load_der_public_key(base64.b64decode(pod_key))
        numbers = public.public_numbers()
        b64url = lambda n: base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()
        claims = {
            "sub": user["username"], "iat": now, "exp": now + self.lifetime,
            "res_tenant": "ocid1.tenancy.oc1..standin", "res_compartment": "ocid1.compartment.oc1..standin",
            "res_type": "workload", "ttype": "res",
            "var_namespace": user["username"].split(":")[2], "var_service_account": user["username"].split(":")[3],
            "jwk": {"kty": "RSA", "alg": "RS256", "kid": "session", "n": b64url(numbers.n), "e": b64url(numbers.e)},
        }
        return jwt.encode(claims, self.signing_key, algorithm="RS256")

    def verify(self, method, path, headers, body):
        """The RPST's claims, when the request is signed as OCI requires; Refused otherwise."""
        auth = headers.get("authorization", "")
        if not auth.startswith("Signature "):
            raise Refused(401, "NotAuthenticated", "no Signature authorization")
        params = {}
        for part in auth[len("Signature "):].split(","):
            k, _, v = part.partition("=")
            params[k.strip()] = v.strip().strip('"')
        if params.get("version") != "1" or params.get("algorithm") != "rsa-sha256":
            raise Refused(401, "NotAuthenticated", "unsupported signature version or algorithm")
        key_id = params.get("keyId", "")
        if not key_id.startswith("ST$"):
            raise Refused(401, "NotAuthenticated", "not a security token key id")
        try:
            claims = jwt.decode(key_id[3:], self.signing_key.public_key(), algorithms=["RS256"])
        except jwt.ExpiredSignatureError:
            raise Refused(401, "NotAuthenticated", "the security token has expired")
        except jwt.InvalidTokenError as e:
            raise Refused(401, "NotAuthenticated", f"the security token is not valid: {e}")
        signed = params.get("headers", "").split(" ")
        need = ["date", "(request-target)", "host"] + (BODY_HEADERS if method in ("POST", "PUT", "PATCH") else [])
        if any(h not in signed for h in need):
            raise Refused(401, "NotAuthenticated", f"headers {need} must be signed, got {signed}")
        date = email.utils.parsedate_to_datetime(headers.get("date", "Thu, 01 Jan 1970 00:00:00 GMT"))
        if abs(time.time() - date.timestamp()) > MAX_SKEW:
            raise Refused(401, "NotAuthenticated", "the date is more than 5 minutes off")
        if headers.get("host") != self.services_host:
            raise Refused(401, "NotAuthenticated", f"signed for host {headers.get('host')}, not this one")
        if "x-content-sha256" in signed:
            digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if headers.get("x-content-sha256") != digest or headers.get("content-length") != str(len(body)):
                raise Refused(401, "NotAuthenticated", "the body does not match its signed hash or length")
        lines = []
        for h in signed:
            value = f"{method.lower()} {path}" if h == "(request-target)" else headers.get(h, "")
            lines.append(f"{h}: {value}")
        jwk = claims["jwk"]
        n = int.from_bytes(base64.urlsafe_b64decode(jwk["n"] + "=="), "big")
        e = int.from_bytes(base64.urlsafe_b64decode(jwk["e"] + "=="), "big")
        try:
            rsa.RSAPublicNumbers(e, n).public_key().verify(
                base64.b64decode(params.get("signature", "")), "\n".join(lines).encode(),
                padding.PKCS1v15(), hashes.SHA256(),
            )
        except Exception:
            raise Refused(401, "NotAuthenticated", "the signature does not verify")
        return claims


def handler(state, role):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def answer(self, status, payload, headers=None):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            headers = dict(headers or {})
            self.send_response(status)
            self.send_header("content-type", headers.pop("content-type", "application/json"))
            self.send_header("content-length", headers.pop("content-length", str(len(data))))
            self.send_header("opc-request-id", uuid.uuid4().hex)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def handle_any(self):
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            entry = {"role": role, "method": self.command, "path": self.path}
            extra = {}
            try:
                answer = (exchange if role == "exchange" else service)(state, self.command, self.path, headers, body)
                status, payload = answer[0], answer[1]
                extra = answer[2] if len(answer) > 2 else {}
                entry["status"] = status
            except Refused as r:
                entry.update(status=r.status, refused=r.message)
                status, payload = r.status, {"code": r.code, "message": r.message}
            # Logged before the answer: whoever got the answer finds the entry.
            state.log("requests.jsonl", entry)
            self.answer(status, payload, extra)

        do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any

    return Handler


def exchange(state, method, path, headers, body):
    if method != "POST" or path != "/resourcePrincipalSessionTokens":
        raise Refused(404, "NotFound", "no such endpoint")
    auth = headers.get("authorization", "")
    if not auth.startswith("Bearer "):
        raise Refused(401, "NotAuthenticated", "no bearer token")
    review = state.apiserver.review(auth[len("Bearer "):])
    user = review.get("user", {})
    if not review.get("authenticated") or not user.get("username", "").startswith("system:serviceaccount:"):
        raise Refused(403, "NotAuthorized", "not a service account of this cluster")
    pod_key = json.loads(body or b"{}").get("podKey", "")
    pod_key = pod_key.replace("-----BEGIN PUBLIC KEY-----", "").replace("-----END PUBLIC KEY-----", "").replace("\n", "")
    try:
        rpst = state.rpst(user, pod_key)
    except Exception:
        raise Refused(400, "InvalidParameter", "podKey is not an RSA public key")
    token = base64.b64encode(json.dumps({"token": "ST$" + rpst}).encode()).decode()
    return 200, json.dumps(token).encode()


def service(state, method, path, headers, body):
    route = path.split("?")[0]
    if method == "GET" and route.endswith("/confirmation") and "token=" in path:
        claims = None
    else:
        claims = state.verify(method, path, headers, body)
    if method == "POST" and route == "/20190301/secretbundles/actions/getByName":
        # GetSecretBundleByName: the name within a vault; secrets.json keys it "<vaultId>/<name>".
        q = dict(urllib.parse.parse_qsl(path.partition("?")[2]))
        if body or "secretName" not in q or "vaultId" not in q:
            raise Refused(400, "InvalidParameter", "secretName and vaultId are required, and no body")
        key = f"{q['vaultId']}/{q['secretName']}"
        secrets = state.read("secrets.json", {})
        if key not in secrets:
            raise Refused(404, "NotAuthorizedOrNotFound", "secret not found or not authorized")
        return 200, {
            "secretId": "ocid1.vaultsecret.oc1.iad." + hashlib.sha256(key.encode()).hexdigest()[:16],
            "versionNumber": 1, "stages": ["CURRENT", "LATEST"],
            "secretBundleContent": {"contentType": "BASE64", "content": secrets[key]},
        }
    if method == "GET" and route.startswith("/20190301/secretbundles/"):
        secret_id = route.rsplit("/", 1)[1]
        secrets = state.read("secrets.json", {})
        if secret_id not in secrets:
            raise Refused(404, "NotAuthorizedOrNotFound", "secret not found or not authorized")
        return 200, {
            "secretId": secret_id, "versionNumber": 1, "stages": ["CURRENT", "LATEST"],
            "secretBundleContent": {"contentType": "BASE64", "content": secrets[secret_id]},
        }
    if method == "GET" and route.startswith("/20181201/subscriptions/") and route.endswith("/confirmation"):
        # What the ConfirmationURL of a CUSTOM_HTTPS subscription points at; unsigned, the
        # token in the query is its credential.
        subscription = route.split("/")[3]
        state.log("confirmations.jsonl", {"subscription": subscription, "query": path.partition("?")[2]})
        return 200, {"subscriptionId": subscription, "message": "confirmed"}
    if method == "POST" and route.startswith("/20181201/topics/") and route.endswith("/messages"):
        topic = route.split("/")[3]
        if topic not in state.read("topics.json", []):
            raise Refused(404, "NotAuthorizedOrNotFound", "topic not found or not authorized")
        message = json.loads(body)
        if "body" not in message:
            raise Refused(400, "InvalidParameter", "body is required")
        state.log("messages.jsonl", {"topic": topic, "message": message, "principal": claims["sub"]})
        return 200, {"messageId": uuid.uuid4().hex, "timeStamp": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if route.startswith("/20210630/repositories/") and method == "GET":
        return devops(state, path)
    if route.startswith("/n/") and method in ("GET", "HEAD"):
        return object_storage(state, method, path)
    if route.startswith("/20180222/"):
        return state.engine.handle(method, path, headers, body)
    raise Refused(404, "NotFound", f"no such operation: {method} {route}")


def merge(base, patch):
    """OCI's update semantics as the stand-in plays them: objects merge, lists replace."""
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


class ContainerEngine:
    """Container Engine node pools and virtual node pools, from DIR/pools.json ({id: body},
    read once) and DIR/clusters.json ({id: compartment}): Get (with an etag), List by
    cluster and name, Update (if-match, else 412; 202 with a work request that is ACCEPTED,
    IN_PROGRESS after 1 s and SUCCEEDED after 3 s, when the pool takes the update and a new
    etag; FAILED with errors instead while DIR/fail-updates exists), GetWorkRequest (with
    retry-after), ListWorkRequestErrors (compartmentId required). Updates are logged to
    DIR/updates.jsonl."""

    def __init__(self, state):
        self.state = state
        self.pools = None
        self.work = {}
        # Its own lock: State.log takes State's.
        self.lock = threading.Lock()

    def load(self):
        if self.pools is None:
            self.pools = {}
            for pid, body in self.state.read("pools.json", {}).items():
                self.pools[pid] = {"body": dict(body, id=pid), "etag": uuid.uuid4().hex}
        return self.pools

    def advance(self):
        now = time.time()
        for wid, w in self.work.items():
            age = now - w["accepted"]
            if w["status"] in ("SUCCEEDED", "FAILED"):
                continue
            if age >= 3:
                pool = self.pools[w["pool"]]
                if w["fail"]:
                    w["status"] = "FAILED"
                    pool["body"]["lifecycleState"] = "ACTIVE"
                else:
                    merge(pool["body"], w["details"])
                    pool["body"]["lifecycleState"] = "ACTIVE"
                    pool["etag"] = uuid.uuid4().hex
                    w["status"] = "SUCCEEDED"
            elif age >= 1:
                w["status"] = "IN_PROGRESS"

    def handle(self, method, path, headers, body):
        with self.lock:
            self.load()
            self.advance()
            return self.route(method, path, headers, body)

    def route(self, method, path, headers, body):
        route, _, query = path.partition("?")
        q = dict(urllib.parse.parse_qsl(query))
        parts = [urllib.parse.unquote(p) for p in route.split("/")[2:]]
        kinds = {"nodePools": "name", "virtualNodePools": "displayName"}
        if parts[0] == "clusters" and len(parts) == 2 and method == "GET":
            compartment = self.state.read("clusters.json", {}).get(parts[1])
            if compartment is None:
                raise Refused(404, "NotAuthorizedOrNotFound", "cluster not found")
            return 200, {"id": parts[1], "compartmentId": compartment, "lifecycleState": "ACTIVE"}
        if parts[0] in kinds and len(parts) == 1 and method == "GET":
            if "compartmentId" not in q:
                raise Refused(400, "MissingParameter", "compartmentId is required")
            field = kinds[parts[0]]
            found = [p["body"] for p in self.pools.values()
                     if p["body"].get("clusterId") == q.get("clusterId", p["body"].get("clusterId"))
                     and ("name" not in q or p["body"].get(field) == q["name"])
                     and ("nodeConfigDetails" in p["body"]) == (parts[0] == "nodePools")]
            return 200, found
        if parts[0] in kinds and len(parts) == 2:
            pool = self.pools.get(parts[1])
            if pool is None or ("nodeConfigDetails" in pool["body"]) != (parts[0] == "nodePools"):
                raise Refused(404, "NotAuthorizedOrNotFound", "pool not found")
            if method == "GET":
                return 200, pool["body"], {"etag": pool["etag"]}
            if method == "PUT":
                return self.update(parts[0], pool, headers, body)
        if parts[0] == "workRequests" and len(parts) >= 2 and method == "GET":
            w = self.work.get(parts[1])
            if w is None:
                raise Refused(404, "NotAuthorizedOrNotFound", "work request not found")
            if len(parts) == 3 and parts[2] == "errors":
                if q.get("compartmentId") != w["compartment"]:
                    raise Refused(400, "MissingParameter", "compartmentId is required and must be the work request's")
                errors = [{"code": "InternalError", "message": "Out of host capacity.", "timestamp": w["iso"]}] if w["status"] == "FAILED" else []
                return 200, errors
            return 200, {"id": parts[1], "status": w["status"], "compartmentId": w["compartment"],
                         "operationType": w["operation"], "timeAccepted": w["iso"],
                         "resources": [{"actionType": "UPDATED", "entityType": w["entity"], "identifier": w["pool"]}]}, {"retry-after": "1"}
        raise Refused(404, "NotFound", f"no such Container Engine operation: {method} {route}")

    def update(self, kind, pool, headers, body):
        match = headers.get("if-match")
        if match is not None and match != pool["etag"]:
            raise Refused(412, "NoEtagMatch", "the etag does not match the pool's")
        if pool["body"].get("lifecycleState") != "ACTIVE":
            raise Refused(409, "Conflict", "the pool is being updated")
        details = json.loads(body or b"{}")
        wid = "ocid1.clustersworkrequest.oc1.iad." + uuid.uuid4().hex[:20]
        virtual = kind == "virtualNodePools"
        self.work[wid] = {
            "status": "ACCEPTED", "accepted": time.time(), "pool": pool["body"]["id"],
            "details": details, "fail": os.path.exists(os.path.join(self.state.dir, "fail-updates")),
            "compartment": pool["body"].get("compartmentId", ""),
            "operation": "VIRTUALNODEPOOL_UPDATE" if virtual else "NODEPOOL_UPDATE",
            "entity": "virtualnodepool" if virtual else "nodepool",
            "iso": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        }
        pool["body"]["lifecycleState"] = "UPDATING"
        self.state.log("updates.jsonl", {"pool": pool["body"]["id"], "details": details, "if-match": headers.get("if-match")})
        return 202, b"", {"opc-work-request-id": wid}


def git(repo, *args):
    out = subprocess.run(["git", "-C", repo, *args], capture_output=True)
    return out.returncode, out.stdout


ARCHIVE_FORMATS = {"tar": "tar", "tar.gz": "tar.gz", "tgz": "tar.gz", "zip": "zip"}


def devops(state, path):
    """DevOps code repositories, from real Git repositories: ListRefs (refName, refType,
    paged by opc-next-page one ref at a time, so paging is exercised), GetCommit and
    GetRepositoryArchiveContent (`git archive`, under a `<repo>-<commit>/` directory as
    hosting services lay archives out)."""
    route, _, query = path.partition("?")
    q = dict(urllib.parse.parse_qsl(query))
    parts = route.split("/")  # '', 20210630, repositories, id, op...
    repo_id = urllib.parse.unquote(parts[3])
    repo = state.read("devops.json", {}).get(repo_id)
    if repo is None:
        raise Refused(404, "NotAuthorizedOrNotFound", "repository not found or not authorized")
    op = parts[4:]
    if op == ["refs"]:
        kinds = {"BRANCH": ("refs/heads/", "commitId"), "TAG": ("refs/tags/", "objectId")}
        items = []
        for kind, (prefix, field) in kinds.items():
            if q.get("refType", kind) != kind:
                continue
            _, out = git(repo, "for-each-ref", "--format=%(refname) %(objectname)", prefix)
            for line in out.decode().splitlines():
                full, sha = line.split(" ")
                name = full[len(prefix):]
                if "refName" in q and q["refName"] != name:
                    continue
                items.append({"refType": kind, "refName": name, "fullRefName": full,
                              "repositoryId": repo_id, field: sha})
        start = int(q.get("page", "0"))
        page = items[start:start + 1]
        more = {"opc-next-page": str(start + 1)} if start + 1 < len(items) else {}
        return 200, {"items": page}, more
    if len(op) == 2 and op[0] == "commits":
        code, out = git(repo, "log", "-1", "--format=%H%n%T%n%an%n%s", op[1] + "^{commit}", "--")
        if code != 0:
            raise Refused(404, "NotAuthorizedOrNotFound", "commit not found")
        sha, tree, author, message = out.decode().split("\n")[:4]
        return 200, {"commitId": sha, "treeId": tree, "authorName": author, "commitMessage": message}
    if op == ["archive", "content"]:
        fmt = ARCHIVE_FORMATS.get(q.get("format", "tar.gz"))
        if fmt is None:
            raise Refused(400, "InvalidParameter", "format must be tar, tar.gz, tgz or zip")
        ref = q.get("refName", "HEAD")
        code, sha = git(repo, "rev-parse", "--verify", "--end-of-options", ref + "^{commit}")
        if code != 0:
            raise Refused(404, "NotAuthorizedOrNotFound", "ref not found")
        sha = sha.decode().strip()
        prefix = f"{os.path.basename(repo.rstrip('/'))}-{sha[:12]}/"
        code, data = git(repo, "archive", f"--format={fmt}", f"--prefix={prefix}", sha)
        if code != 0:
            raise Refused(500, "InternalServerError", "archive failed")
        return 200, data, {"content-type": "application/octet-stream",
                           "content-disposition": f'attachment; filename="{prefix[:-1]}.{fmt}"'}
    raise Refused(404, "NotFound", f"no such DevOps operation: {route}")


def object_storage(state, method, path):
    """Object Storage from DIR/buckets/{namespace}/{bucket}/: HeadObject and GetObject
    (ETag from the content, content-md5), ListObjects (prefix, start, limit, fields; paged
    by nextStartWith)."""
    route, _, query = path.partition("?")
    q = dict(urllib.parse.parse_qsl(query))
    parts = route.split("/")  # '', n, ns, b, bucket, o, [name]
    if len(parts) < 6 or parts[3] != "b" or parts[5] != "o":
        raise Refused(404, "NotFound", "no such Object Storage operation")
    ns, bucket = urllib.parse.unquote(parts[2]), urllib.parse.unquote(parts[4])
    root = os.path.realpath(os.path.join(state.dir, "buckets", ns, bucket))
    if not os.path.isdir(root) or not root.startswith(os.path.realpath(os.path.join(state.dir, "buckets")) + "/"):
        raise Refused(404, "BucketNotFound", "bucket not found or not authorized")

    def etag(data):
        return str(uuid.UUID(hashlib.md5(data).hexdigest()))

    if len(parts) == 6:
        if method != "GET":
            raise Refused(405, "MethodNotAllowed", "ListObjects is a GET")
        names = []
        for d, _, files in os.walk(root):
            for f in files:
                names.append(os.path.relpath(os.path.join(d, f), root))
        names = sorted(n for n in names if n.startswith(q.get("prefix", "")) and n >= q.get("start", ""))
        limit = int(q.get("limit", "1000"))
        fields = set(q.get("fields", "name").split(","))
        objects = []
        for n in names[:limit]:
            data = open(os.path.join(root, n), "rb").read()
            o = {"name": n}
            if "size" in fields:
                o["size"] = len(data)
            if "etag" in fields:
                o["etag"] = etag(data)
            if "md5" in fields:
                o["md5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
            objects.append(o)
        answer = {"objects": objects, "prefixes": []}
        if len(names) > limit:
            answer["nextStartWith"] = names[limit]
        return 200, answer
    name = urllib.parse.unquote("/".join(parts[6:]))
    full = os.path.realpath(os.path.join(root, name))
    if not full.startswith(root + "/") or not os.path.isfile(full):
        raise Refused(404, "ObjectNotFound", "object not found")
    data = open(full, "rb").read()
    headers = {"etag": etag(data), "content-md5": base64.b64encode(hashlib.md5(data).digest()).decode(),
               "content-type": "application/octet-stream", "content-length": str(len(data))}
    return 200, data, headers


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--exchange-port", type=int, default=0)
    p.add_argument("--services-port", type=int, default=0)
    p.add_argument("--token-lifetime", type=int, default=30)
    args = p.parse_args()
    state = State(args)
    tls = make_tls(args.dir)
    servers = {}
    for role, port in (("exchange", args.exchange_port), ("services", args.services_port)):
        ThreadingHTTPServer.allow_reuse_address = True
        server = ThreadingHTTPServer(("127.0.0.1", port), handler(state, role))
        server.socket = tls.wrap_socket(server.socket, server_side=True)
        servers[role] = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
    ports = {role: s.server_address[1] for role, s in servers.items()}
    state.services_host = f"127.0.0.1:{ports['services']}"
    tmp = os.path.join(args.dir, "ports.json.tmp")
    with open(tmp, "w") as f:
        json.dump(ports, f)
    os.rename(tmp, os.path.join(args.dir, "ports.json"))
    # Until the test closes our stdin.
    import sys
    sys.stdin.read()


if __name__ == "__main__":
    main()
