import os

from celery import Celery

from console.broker import register as register_broker

register_broker()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task modules inside app subpackages (autodiscovery only looks at <app>.tasks).
app.autodiscover_tasks(["sessions.harness"])
