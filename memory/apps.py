from django.apps import AppConfig


class MemoryStoresConfig(AppConfig):
    name = "memory"
    label = "memory_stores"
    default_auto_field = "django.db.models.BigAutoField"
