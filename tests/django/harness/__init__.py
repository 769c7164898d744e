"""A tiny Django 5.2 + DRF project whose views do exactly what quota-proxy's
flag presets claim, and record every image they "save" (tests/django.rs)."""
