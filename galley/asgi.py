import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "galley.settings")
django.setup(set_prefix=False)

from galley.asgi_threads import PooledThreadsASGIHandler  # noqa: E402

django_asgi_app = PooledThreadsASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

import harness.tasks  # noqa: E402,F401
from console.ws_routes import websocket_urlpatterns  # noqa: E402
from galley.celery import app as celery_app  # noqa: E402

# Loaded before the first request, not by it: a send's kick imports the harness's tasks (above: and with
# them the harness and its providers) and finalizes the Celery app, which held the interpreter in the middle
# of the first send a web process served (90 ms, against 30 ms with both done here), stalling its other
# requests.
celery_app.finalize(auto=True)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
