"""Routes: the production chat app's send view and probe, the forward-auth
identity view, a DRF view and a plain Django form view."""
from django.urls import path

from . import views

urlpatterns = [
    path("chat/session/<int:session_id>/send/", views.send_message),
    path("chat/session/<int:session_id>/image-generation-access/", views.image_generation_access),
    path("api/quota/identity/", views.quota_identity),
    path("api/drf/session/<int:session_id>/send/", views.DrfSend.as_view()),
    path("form/session/<int:session_id>/send/", views.form_send),
    path("healthz/", views.healthz),
]
