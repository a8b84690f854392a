from django.apps import AppConfig


class GalleyConfig(AppConfig):
    """The Django project itself: settings, URLs, ASGI and Celery apps, and `serve`/`bootstrap`."""

    name = "galley"
    default_auto_field = "django.db.models.BigAutoField"
