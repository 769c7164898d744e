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
# HARNESS_SSL_REDIRECT=1: the settings Django's deployment checklist asks
# for behind a TLS-terminating front (`manage.py check --deploy`): every
# request that is not HTTPS is redirected there, and a request is HTTPS when
# the front says so in X-Forwarded-Proto. The health check is exempt, as
# load balancers probe over plain HTTP.
# HARNESS_X_FORWARDED_HOST=1: the host is the front's X-Forwarded-Host
# (nginx's default proxy_pass sends `Host: <upstream address>`).
USE_X_FORWARDED_HOST = _os.environ.get("HARNESS_X_FORWARDED_HOST") == "1"
if _os.environ.get("HARNESS_SSL_REDIRECT") == "1":
    MIDDLEWARE = ["django.middleware.security.SecurityMiddleware"] + MIDDLEWARE
    SECURE_SSL_REDIRECT = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_REDIRECT_EXEMPT = [r"^healthz/$"]
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
