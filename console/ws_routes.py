from typing import Any

from django.urls import path

from console.consumers import SessionConsumer

websocket_urlpatterns: list[Any] = [
    path("ws/sessions/<str:session_id>", SessionConsumer.as_asgi()),
]
