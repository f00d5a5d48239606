#!/usr/bin/env python3
"""An auditor's independent check of a Circle log, written only from ARCHITECTURE.md
("The audit chain", "Checkpoints and proofs") with the Python standard library and
`cryptography` (Ed25519). It shares no code with Circle: that it agrees with the Rust
verifier is the test that the documented format is complete.

    verify_log.py EXPORT.ndjson CHECKPOINT VERIFIER_KEY [BASE_URL TOKEN]

Recomputes every event's chain hash and the RFC 6962 root from the export, checks the
checkpoint's signature and root; with a URL, fetches one inclusion proof and one
consistency proof and checks both against roots it computed itself. Prints
`ok <n> events, root <hex>` and exits 0, or `FAIL <reason>` and exits 1.
"""

import base64
import hashlib
import json
import re
import sys
import urllib.request
import uuid
from datetime import datetime, timezone

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})Z$")


class Fail(Exception):
    pass


def micros(text):
    m = TIME.match(text)
    if not m:
        raise Fail(f"time {text!r} is not RFC 3339 UTC with six fractional digits")
    y, mo, d, h, mi, s, us = (int(g) for g in m.groups())
    delta = datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc) - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + us


def u32(n):
    return n.to_bytes(4, "big")


def i64(n):
    return n.to_bytes(8, "big", signed=True)


def string(s):
    b = s.encode("utf-8")
    return u32(len(b)) + b


def canonical_bytes(e):
    """canonical_bytes, format 1."""
    out = b"\x01" + i64(e["position"]) + uuid.UUID(e["event_id"]).bytes
    out += string(e["aggregate_type"]) + string(e["aggregate_id"]) + i64(e["sequence"])
    out += string(e["event_type"]) + u32(e["event_version"]) + string(e["payload"])
    out += i64(micros(e["occurred_at"])) + i64(micros(e["recorded_at"]))
    out += string(e["actor_id"]) + string(e["actor_role"])
    out += uuid.UUID(e["correlation_id"]).bytes
    if e["causation_id"] is None:
        out += b"\x00"
    else:
        out += b"\x01" + uuid.UUID(e["causation_id"]).bytes
    return out


def sha256(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


def leaf(chain_hash):
    return sha256(b"\x00", chain_hash)


def node(left, right):
    return sha256(b"\x01", left, right)


def mth(leaves):
    """RFC 6962 §2.1 Merkle Tree Hash of a list of leaf hashes."""
    n = len(leaves)
    if n == 0:
        return sha256()
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node(mth(leaves[:k]), mth(leaves[k:]))


def verify_inclusion(index, size, leaf_hash, proof, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, first_hash, second_hash, proof):
    """RFC 9162 §2.1.4.2, for 0 < first < second."""
    if not 0 < first < second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_hash)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node(c, fr), node(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_hash and sr == second_hash and sn == 0


def open_checkpoint(note, vkey):
    """A C2SP checkpoint in a signed note, checked with a signed-note verifier key."""
    name, key_id, key = vkey.strip().split("+", 2)
    key = base64.b64decode(key)
    if key[0] != 1 or len(key) != 33:
        raise Fail("the verifier key is not Ed25519")
    public = key[1:]
    if sha256(name.encode(), b"\n\x01", public)[:4].hex() != key_id:
        raise Fail("the verifier key's id does not match the key")
    split = note.rfind("\n\n")
    if split < 0:
        raise Fail("the checkpoint has no signature block")
    text, signatures = note[: split + 1], note[split + 2 :]
    verified = False
    for line in signatures.splitlines():
        if not line.startswith("\u2014 "):
            raise Fail("a signature line does not start with an em dash")
        signer, sig = line[2:].split(" ", 1)
        sig = base64.b64decode(sig)
        if signer != name or sig[:4].hex() != key_id:
            continue
        try:
            Ed25519PublicKey.from_public_bytes(public).verify(sig[4:], text.encode())
        except InvalidSignature:
            raise Fail("the checkpoint's signature does not verify")
        verified = True
    if not verified:
        raise Fail("the checkpoint is not signed by this key")
    origin, size, root = text.split("\n")[:3]
    if origin != name:
        raise Fail("the checkpoint's origin is not the key's name")
    return int(size), base64.b64decode(root)


def fetch(base, token, path):
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def main(argv):
    export, checkpoint, vkey = argv[1:4]
    chain_hashes = []
    previous = bytes(32)
    with open(export, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            e = json.loads(line)
            position = len(chain_hashes) + 1
            if e["position"] != position:
                raise Fail(f"position {position}: line {number} holds position {e['position']}")
            h = sha256(previous, canonical_bytes(e))
            if h.hex() != e["hash"]:
                raise Fail(f"position {position}: the hash does not match")
            chain_hashes.append(h)
            previous = h
    leaves = [leaf(h) for h in chain_hashes]
    with open(checkpoint, encoding="utf-8") as f, open(vkey, encoding="utf-8") as k:
        size, signed_root = open_checkpoint(f.read(), k.read())
    if size > len(leaves) or mth(leaves[:size]) != signed_root:
        raise Fail(f"the export does not have the root signed for size {size}")

    if len(argv) > 5:
        base, token = argv[4], argv[5]
        position = (size + 1) // 2
        got = fetch(base, token, f"/api/v1/audit/proof/inclusion?position={position}&tree_size={size}")
        proof = [bytes.fromhex(h) for h in got["proof"]]
        if not verify_inclusion(position - 1, size, leaves[position - 1], proof, signed_root):
            raise Fail(f"the inclusion proof of position {position} does not verify")
        old = max(1, size // 3)
        got = fetch(base, token, f"/api/v1/audit/proof/consistency?from={old}&to={size}")
        proof = [bytes.fromhex(h) for h in got["proof"]]
        if old < size and not verify_consistency(old, size, mth(leaves[:old]), signed_root, proof):
            raise Fail(f"the consistency proof from {old} to {size} does not verify")
    print(f"ok {len(leaves)} events, root {mth(leaves).hex()}")


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (Fail, ValueError, KeyError, TypeError, OSError) as error:
        print(f"FAIL {error}")
        sys.exit(1)
