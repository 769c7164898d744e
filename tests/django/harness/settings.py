"""Settings of the harness project: no database, no auth app, no CSRF (the
views under test are the flag parsers, not Django's own protections)."""

SECRET_KEY = "harness-only-not-secret"
DEBUG = False
# HARNESS_ALLOWED_HOSTS=a,b: only these hosts, as a production project has.
import os as _os

ALLOWED_HOSTS = [h for h in _os.environ.get("HARNESS_ALLOWED_HOSTS", "*").split(",") if h]
ROOT_URLCONF = "harness.urls"
WSGI_APPLICATION = "harness.wsgi.application"
INSTALLED_APPS = ["rest_framework"]
MIDDLEWARE = [
    "harness.middleware.HarnessMiddleware",
    # APPEND_SLASH, as in a default project: a POST without the slash is a
    # redirect (no view runs).
    "django.middleware.common.CommonMiddleware",
]
# HARNESS_GZIP=1: Django's own GZipMiddleware, as many projects enable it
# (it compresses streamed answers too when the client accepts gzip).
import os as _os

if _os.environ.get("HARNESS_GZIP") == "1":
    MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware"] + MIDDLEWARE
DATABASES = {}
USE_TZ = True
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": [],
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "ERROR"}},
}
