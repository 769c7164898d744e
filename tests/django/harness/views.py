"""Views that read the image flag exactly as each quota-proxy preset claims
the backend does, and record every image they "save".

- `send_message`: the production chat app's view (preset
  `flag_rules = "django-send-message"`): multipart bodies by Django's
  MultiPartParser and `== 'true'`; every other body by `json.loads` and
  Python truthiness; sessions with id >= 1000000000 are `image_editing` and
  generate whatever the flag says. Streams text/plain, echoes the user's
  message (as the chat app does) and ends with the in-band report.
- `DrfSend`: a REST framework view, `BooleanField` (preset `"drf"`).
- `form_send`: a plain Django view (preset `"django-form"`).

A save appends one JSON line to the file named by HARNESS_SAVED_FILE:
{"user", "view", "session", "case"}; the tests count those lines.
"""
import json
import os
import time

from django.http import (
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.response import Response
from rest_framework.views import APIView

# HARNESS_SEND_DELAY=<seconds>: the send view works this long before it
# answers (the response head), as the chat app does when it generates before
# its first byte ("Generation can take minutes before the first byte",
# config/django-mobixai.toml).
SEND_DELAY = float(os.environ.get("HARNESS_SEND_DELAY", "0") or 0)
# HARNESS_SEND_STALL=<seconds>: the send view's stream falls silent this long
# after its first lines, before it saves the image (the chat app streams
# text, then generates and saves the image, then reports).
SEND_STALL = float(os.environ.get("HARNESS_SEND_STALL", "0") or 0)

# Sessions with this id or above are of type image_editing.
IMAGE_EDITING_FROM = 1_000_000_000

PLANS = {
    "free": {"daily": 3, "weekly": 10, "monthly": 30},
    "pro": {"daily": 50, "weekly": 0, "monthly": 1000},
}


def record_save(request, view, session_id):
    """Appends one saved image to the harness's file (one write, O_APPEND)."""
    line = json.dumps(
        {
            "user": request.quota_user,
            "view": view,
            "session": session_id,
            "case": request.headers.get("X-Harness-Case", ""),
        }
    )
    fd = os.open(os.environ["HARNESS_SAVED_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def login_redirect(request):
    return HttpResponseRedirect("/accounts/login/?next=" + request.path)


def send_message(request, session_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if request.quota_user is None:
        return login_redirect(request)
    if request.content_type == "multipart/form-data":
        generate_image = request.POST.get("generate_image") == "true"
        message = request.POST.get("message", "")
        saw = {"body": "multipart", "generate_image": request.POST.getlist("generate_image")}
    else:
        data = json.loads(request.body)
        generate_image = data.get("generate_image", False)
        message = data.get("message", "")
        saw = {"body": "json", "generate_image": repr(generate_image)}
    generate = bool(generate_image) or session_id >= IMAGE_EDITING_FROM
    token = request.headers.get("X-Quota-Report-Token", "")
    if SEND_DELAY:
        time.sleep(SEND_DELAY)

    def stream():
        yield json.dumps({"generate": generate, "saw": saw, "session": session_id}) + "\n"
        yield "You said: " + str(message) + "\n"
        if SEND_STALL:
            time.sleep(SEND_STALL)
        if generate:
            record_save(request, "send", session_id)
            yield "[IMAGES_SAVED]" + json.dumps({"count": 1, "token": token}) + "[IMAGES_SAVED_END]"

    response = StreamingHttpResponse(stream(), content_type="text/plain; charset=utf-8")
    response["X-Accel-Buffering"] = "no"
    return response


# HARNESS_ACCESS_ANONYMOUS=false: the access view answers an anonymous
# caller `{"has_access": false}` (an app that says "no access" to whoever is
# not signed in) instead of sending them to the login page.
ACCESS_ANONYMOUS = os.environ.get("HARNESS_ACCESS_ANONYMOUS", "")


def image_generation_access(request, session_id):
    if request.quota_user is None:
        if ACCESS_ANONYMOUS == "false":
            return JsonResponse({"has_access": False})
        return login_redirect(request)
    return JsonResponse({"has_access": session_id >= IMAGE_EDITING_FROM})


def quota_identity(request):
    if request.quota_user is None:
        return JsonResponse({"detail": "not authenticated"}, status=401)
    plan = request.quota_plan
    return JsonResponse({"user_id": request.quota_user, "plan": plan, "limits": PLANS[plan]})


class _ApiUser:
    is_authenticated = True

    def __init__(self, user_id, plan):
        self.pk = user_id
        self.plan = plan


class BearerAuthentication(BaseAuthentication):
    """Imitates djangorestframework-simplejwt's JWTAuthentication: no
    `Authorization`, or another scheme, is no opinion; `Bearer <token>`
    that is not a valid token is 401 (`InvalidToken`). The harness's tokens
    are the session values: `u<digits>`, `p<digits>`."""

    def authenticate(self, request):
        parts = request.META.get("HTTP_AUTHORIZATION", "").split()
        if len(parts) != 2 or parts[0] != "Bearer":
            return None
        token = parts[1]
        if len(token) > 1 and token[0] in "up" and token[1:].isascii() and token[1:].isdigit():
            return (_ApiUser(str(int(token[1:])), "free" if token[0] == "u" else "pro"), token)
        raise AuthenticationFailed("Given token not valid for any token type")

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class CookieSessionAuthentication(BaseAuthentication):
    """DRF's SessionAuthentication, on the harness's `sessionid` users."""

    def authenticate(self, request):
        user = request._request.quota_user
        if user is None:
            return None
        return (_ApiUser(user, request._request.quota_plan), None)


class DrfIdentity(APIView):
    """The identity view as docs/identity.md advises for apps whose clients
    also send `Authorization`: decorated for DRF, with simplejwt listed
    first, as its docs show."""

    authentication_classes = [BearerAuthentication, CookieSessionAuthentication]

    def get(self, request):
        user = request.user
        if user is None or not getattr(user, "is_authenticated", False):
            return Response({"detail": "not authenticated"}, status=401)
        return Response({"user_id": user.pk, "plan": user.plan, "limits": PLANS[user.plan]})


# HARNESS_IDENTITY_DRF=1: the identity view is DrfIdentity.
if os.environ.get("HARNESS_IDENTITY_DRF") == "1":
    quota_identity = DrfIdentity.as_view()  # noqa: F811


class SendSerializer(serializers.Serializer):
    generate_image = serializers.BooleanField(required=False, default=False)
    message = serializers.CharField(required=False, allow_blank=True, default="")


class DrfSend(APIView):
    def post(self, request, session_id):
        if request._request.quota_user is None:
            return Response({"detail": "not authenticated"}, status=401)
        serializer = SendSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        generate = serializer.validated_data["generate_image"]
        saw = repr(request.data.get("generate_image")) if hasattr(request.data, "get") else None
        response = Response({"generate": generate, "saw": saw, "session": session_id})
        if generate:
            record_save(request._request, "drf", session_id)
            response["X-Images-Saved"] = "1"
        return response


def form_send(request, session_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    if request.quota_user is None:
        return login_redirect(request)
    if request.content_type == "application/json":
        data = json.loads(request.body)
        value = data.get("generate_image")
        generate = bool(value)
    else:
        value = request.POST.get("generate_image", "")
        generate = value.lower() in ("true", "1", "on")
    response = JsonResponse({"generate": generate, "saw": repr(value), "session": session_id})
    if generate:
        record_save(request, "form", session_id)
        response["X-Images-Saved"] = "1"
    return response


def healthz(request):
    return JsonResponse({"ok": True})
