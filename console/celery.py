import os

from celery import Celery

from console.broker import register as register_broker

register_broker()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")

app = Celery("console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task modules that live below an app package rather than at `<app>/tasks.py`.
app.conf.imports = ("sessions.harness.tasks", "sessions.sandbox.tasks")
