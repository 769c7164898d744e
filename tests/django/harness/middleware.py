"""Who is asking, and a mark on every answer that Django itself wrote.

The harness has no user table: the `sessionid` cookie `u<digits>` is user
<digits> on the free plan, `p<digits>` the same on the pro plan; anything else
is anonymous. Every response that went through Django carries
`X-Harness-Django: 1`, so a test can tell Django's answers from the proxy's
and from gunicorn's own errors.

HARNESS_JWT_COOKIE=<name>: users are instead read from that cookie holding an
HS256 token signed with SECRET_KEY (`user_id` claim, free plan), read from
`request.COOKIES` as the cookie-JWT authentication classes commonly written
for djangorestframework-simplejwt do (`request.COOKIES.get(AUTH_COOKIE)`).
HARNESS_JWT_BEARER=1: the same tokens from `Authorization: Bearer <token>`,
read as simplejwt's JWTAuthentication reads the header (`get_raw_token`:
the latin-1 bytes split on whitespace, exactly two parts, `Bearer`).
HARNESS_JWT_HEADER_TYPE=<scheme>: that scheme instead of `Bearer`
(simplejwt's AUTH_HEADER_TYPES); HARNESS_JWT_HEADER_NAME=<META key>: the
token from that header instead of `HTTP_AUTHORIZATION` (simplejwt's
AUTH_HEADER_NAME); HARNESS_JWT_USER_CLAIM=<claim>: the user
is in that claim instead of `user_id` (simplejwt's USER_ID_CLAIM). Like
simplejwt without AUDIENCE and ISSUER, `aud` and `iss` are not checked."""

import base64
import hashlib
import hmac
import json
import os
import time

from django.conf import settings

JWT_COOKIE = os.environ.get("HARNESS_JWT_COOKIE", "")
JWT_BEARER = os.environ.get("HARNESS_JWT_BEARER") == "1"
JWT_HEADER_TYPE = os.environ.get("HARNESS_JWT_HEADER_TYPE", "Bearer").encode()
JWT_HEADER_NAME = os.environ.get("HARNESS_JWT_HEADER_NAME", "HTTP_AUTHORIZATION")
JWT_USER_CLAIM = os.environ.get("HARNESS_JWT_USER_CLAIM", "user_id")


def _b64(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_user(token):
    """The user id of a valid HS256 token, or None (simplejwt's checks)."""
    try:
        header, payload, signature = token.split(".")
        signed = (header + "." + payload).encode()
        expected = hmac.new(settings.SECRET_KEY.encode(), signed, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _b64(signature)):
            return None
        if json.loads(_b64(header)).get("alg") != "HS256":
            return None
        claims = json.loads(_b64(payload))
        if claims.get("exp", 0) < time.time():
            return None
        return str(int(claims[JWT_USER_CLAIM]))
    except Exception:
        return None


class HarnessMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.quota_user = None
        request.quota_plan = None
        cookie = request.COOKIES.get("sessionid", "")
        if len(cookie) > 1 and cookie[0] in "up" and cookie[1:].isascii() and cookie[1:].isdigit():
            request.quota_user = str(int(cookie[1:]))
            request.quota_plan = "free" if cookie[0] == "u" else "pro"
        if JWT_COOKIE:
            request.quota_user = jwt_user(request.COOKIES.get(JWT_COOKIE, ""))
            request.quota_plan = "free" if request.quota_user else None
        if JWT_BEARER:
            header = request.META.get(JWT_HEADER_NAME)
            parts = header.encode("iso-8859-1").split() if header is not None else []
            token = parts[1].decode() if len(parts) == 2 and parts[0] == JWT_HEADER_TYPE else ""
            request.quota_user = jwt_user(token)
            request.quota_plan = "free" if request.quota_user else None
        response = self.get_response(request)
        response["X-Harness-Django"] = "1"
        return response
