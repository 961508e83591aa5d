"""Prints an HS256 JWT for the contract run: mint.py SECRET USER_ID SCOPE."""

import base64
import hashlib
import hmac
import json
import sys
import time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, user_id: str, scope: str) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"userId": user_id, "scope": scope, "exp": int(time.time()) + 3600}
    unsigned = ".".join(
        b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
    )
    signature = hmac.new(secret.encode(), unsigned.encode(), hashlib.sha256).digest()
    return f"{unsigned}.{b64url(signature)}"


if __name__ == "__main__":
    secret, user_id, scope = sys.argv[1:4]
    print(mint(secret, user_id, scope))
