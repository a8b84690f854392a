from django.apps import AppConfig


class SelfHostedConfig(AppConfig):
    name = "selfhosted"
    verbose_name = "Self-hosted environments"
    default_auto_field = "django.db.models.BigAutoField"
