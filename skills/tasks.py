from celery import shared_task


@shared_task(name="skills.build_python", acks_late=True)
def build_skill_python() -> bool:
    """Builds the built-in skills' Python prefix on this host if it is missing."""
    from skills.runtime import skill_python_ensure

    return skill_python_ensure() is not None
