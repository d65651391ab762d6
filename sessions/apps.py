from django.apps import AppConfig


class SessionsConfig(AppConfig):
    name = "sessions"
    label = "opscore_sessions"  # django.contrib.sessions already owns the "sessions" label
    verbose_name = "Sessions"
