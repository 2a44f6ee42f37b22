"""A boardlink client written from docs/protocol.md alone, with Debian's
python3-websockets and python3-cryptography: nothing of boardlink's.

usage: client.py URL TOKEN FINGERPRINT
Prints one JSON line per check; exits non-zero on the first failure.
"""
import asyncio
import base64
import hashlib
import hmac
import json
import os
import ssl
import sys

import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

URL, TOKEN, FINGERPRINT = sys.argv[1], sys.argv[2], sys.argv[3]


def b64(b):
    return base64.b64encode(b).decode()


def fingerprint(raw_key):
    spki = Ed25519PublicKey.from_public_bytes(raw_key).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def context():
    # The board's certificate is self-signed: its key is checked below.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def call(ws, id, method, params=None):
    await ws.send(json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params or {}}))
    while True:
        msg = await ws.recv()
        if isinstance(msg, str):
            m = json.loads(msg)
            if m.get("id") == id:
                return m


async def main():
    async with websockets.connect(URL, ssl=context()) as ws:
        cert = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        nonce = os.urandom(32)
        hello = (await call(ws, 1, "session.hello", {"protocol": 4, "client": "client.py", "nonce": b64(nonce)}))["result"]
        key = base64.b64decode(hello["auth"]["key"])
        board_nonce = base64.b64decode(hello["auth"]["nonce"])
        fp = fingerprint(key)
        assert "SHA256:" + base64.b64encode(fp).decode().rstrip("=") == FINGERPRINT, "fingerprint"
        assert key in cert, "the TLS certificate holds another key"
        Ed25519PublicKey.from_public_bytes(key).verify(
            base64.b64decode(hello["auth"]["proof"]), b"boardlink board proof v1\0" + nonce + board_nonce + fp)
        print(json.dumps({"check": "board proof", "ok": True}))
        denied = await call(ws, 2, "board.info")
        assert denied["error"]["data"]["reason"] == "unauthorized", denied
        print(json.dumps({"check": "refused before auth", "ok": True}))
        mac = hmac.new(TOKEN.encode(), b"boardlink token proof v1\0" + nonce + board_nonce + fp, hashlib.sha256).digest()
        res = await call(ws, 3, "session.auth", {"token_proof": b64(mac)})
        assert res["result"]["method"] == "token", res
        info = (await call(ws, 4, "board.info"))["result"]
        assert info["fingerprint"] == FINGERPRINT, info
        print(json.dumps({"check": "token proof", "ok": True, "board": info["id"]}))
    # A token on the upgrade, as a quick script would send it.
    async with websockets.connect(URL, ssl=context(), extra_headers={"Authorization": "Bearer " + TOKEN}) as ws:
        info = (await call(ws, 1, "board.info"))["result"]
        print(json.dumps({"check": "bearer", "ok": True, "board": info["id"]}))
    try:
        async with websockets.connect(URL, ssl=context(), extra_headers={"Authorization": "Bearer wrong-token-0123456789"}):
            raise AssertionError("a wrong bearer token was accepted")
    except websockets.exceptions.InvalidStatusCode as e:
        assert e.status_code == 401, e.status_code
        print(json.dumps({"check": "wrong bearer", "ok": True, "status": e.status_code}))


asyncio.run(main())
