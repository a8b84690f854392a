from typing import Any

import pytest

from accounts.models import Workspace
from agents import services
from agents.models import Environment
from api.errors import ApiError

pytestmark = pytest.mark.django_db


def error_of(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def create(workspace: Workspace, **body: Any) -> Environment:
    return services.environment_create(workspace=workspace, body={"name": "python", **body})


EMPTY = {"type": "packages", "apt": [], "cargo": [], "gem": [], "go": [], "npm": [], "pip": []}


def test_default_config_is_cloud_unrestricted_without_packages(workspace):
    out = services.environment_wire(create(workspace))
    assert out["config"] == {"type": "cloud", "networking": {"type": "unrestricted"}, "packages": EMPTY}
    assert out["description"] is None and out["metadata"] == {} and out["scope"] == "organization"


def test_limited_networking_is_fully_resolved(workspace):
    env = create(
        workspace,
        config={"type": "cloud", "networking": {"type": "limited", "allowed_hosts": ["api.example.com"]}},
    )
    assert env.config["networking"] == {
        "type": "limited",
        "allowed_hosts": ["api.example.com"],
        "allow_mcp_servers": False,
        "allow_package_managers": False,
    }


def test_packages_under_limited_networking_need_package_managers(workspace):
    err = error_of(
        lambda: create(
            workspace,
            config={"type": "cloud", "networking": {"type": "limited"}, "packages": {"pip": ["pandas"]}},
        )
    )
    assert err.status == 400 and "allow_package_managers" in err.message
    env = create(
        workspace,
        config={
            "type": "cloud",
            "networking": {"type": "limited", "allow_package_managers": True},
            "packages": {"pip": ["pandas==2.2.0"]},
        },
    )
    assert env.config["packages"] == {**EMPTY, "pip": ["pandas==2.2.0"]}


@pytest.mark.parametrize("entry", ["", "-e git+https://evil", "pandas; rm -rf /", "a b"])
def test_bad_package_entries_are_rejected(workspace, entry):
    err = error_of(lambda: create(workspace, config={"type": "cloud", "packages": {"pip": [entry]}}))
    assert err.status == 400 and "config.packages.pip[0]" in err.message


def test_self_hosted_config_has_only_a_type(workspace):
    assert create(workspace, config={"type": "self_hosted"}).config == {"type": "self_hosted"}
    err = error_of(lambda: create(workspace, name="x", config={"type": "self_hosted", "packages": {}}))
    assert "config.packages" in err.message


def test_duplicate_name_is_a_409(workspace):
    create(workspace)
    err = error_of(lambda: create(workspace))
    assert err.status == 409 and "name" in err.message


def test_update_preserves_omitted_config_fields(workspace):
    env = create(
        workspace,
        config={
            "type": "cloud",
            "networking": {"type": "limited", "allowed_hosts": ["a.com"], "allow_package_managers": True},
            "packages": {"pip": ["pandas"], "npm": ["left-pad"]},
        },
    )
    env = services.environment_update(
        environment=env, body={"config": {"type": "cloud", "packages": {"pip": ["numpy"]}}}
    )
    assert env.config["networking"]["allowed_hosts"] == ["a.com"]
    assert env.config["packages"]["pip"] == ["numpy"] and env.config["packages"]["npm"] == ["left-pad"]
    env = services.environment_update(
        environment=env,
        body={"config": {"type": "cloud", "networking": {"type": "limited", "allow_mcp_servers": True}}},
    )
    assert env.config["networking"] == {
        "type": "limited",
        "allowed_hosts": ["a.com"],
        "allow_mcp_servers": True,
        "allow_package_managers": True,
    }


def test_config_type_change_is_rejected_with_its_error_code(workspace):
    env = create(workspace)
    err = error_of(
        lambda: services.environment_update(environment=env, body={"config": {"type": "self_hosted"}})
    )
    assert err.status == 400 and err.details["error_code"] == "invalid_config_type_change"


def test_metadata_patch_deletes_on_null_and_empty_string(workspace):
    env = create(workspace, metadata={"a": "1", "b": "2", "c": "3"})
    env = services.environment_update(environment=env, body={"metadata": {"a": None, "b": "", "d": "4"}})
    assert env.metadata == {"c": "3", "d": "4"}


def test_archived_environment_rejects_updates(workspace):
    env = services.environment_archive(environment=create(workspace))
    assert env.archived_at is not None
    err = error_of(lambda: services.environment_update(environment=env, body={"description": "x"}))
    assert err.status == 400 and err.details["error_code"] == "environment_archived"


def test_delete_answers_the_deleted_shape(workspace):
    env_id = create(workspace).id
    env = Environment.objects.get(pk=env_id)
    assert services.environment_delete(environment=env) == {"id": env_id, "type": "environment_deleted"}
    assert not Environment.objects.filter(pk=env_id).exists()


def test_delete_is_refused_while_sessions_use_it(workspace):
    from sessions.models import Session

    env = create(workspace)
    agent = services.agent_create(workspace=workspace, body={"name": "a", "model": "claude-m"})
    version = services.agent_version_get(agent=agent, version=None)
    Session.objects.create(
        id="sesn_test",
        workspace=workspace,
        agent=agent,
        agent_version=1,
        agent_snapshot=version.snapshot(),
        environment=env,
    )
    err = error_of(lambda: services.environment_delete(environment=env))
    assert err.status == 409 and "sessions" in err.message
    assert Environment.objects.filter(pk=env.id).exists()


def test_other_workspace_and_wrong_prefix_are_404(workspace):
    env = create(workspace)
    other = Workspace.objects.create(name="other")
    for ws, env_id in [(other, env.id), (workspace, "agent_x"), (workspace, "env_missing")]:
        err = error_of(
            lambda ws=ws, env_id=env_id: services.environment_get(workspace=ws, environment_id=env_id)
        )
        assert (
            err.status == 404
            and env_id in err.message
            and err.details["error_code"] == "environment_not_found"
        )


def test_list_hides_archived_unless_asked(workspace):
    kept = create(workspace, name="kept")
    gone = services.environment_archive(environment=create(workspace, name="gone"))
    assert [e.id for e in services.environment_list(workspace=workspace).items] == [kept.id]
    assert {e.id for e in services.environment_list(workspace=workspace, include_archived=True).items} == {
        kept.id,
        gone.id,
    }


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_with_one_name_give_one_environment_and_one_409(workspace):
    from tests.concurrency import race

    outcomes = race(lambda: create(workspace, name="twin").id)
    assert sorted(outcomes, key=str).count(409) == 1
    assert Environment.objects.filter(workspace=workspace, name="twin").count() == 1


def test_a_bad_package_name_is_refused_at_create_naming_the_entry(workspace):
    config = {"type": "cloud", "packages": {"apt": ["curl", "curl; rm -rf /"]}}
    err = error_of(lambda: create(workspace, config=config))
    assert err.status == 400 and err.message.startswith("config.packages.apt[1]")
    assert not Environment.objects.exists()
    env = create(workspace, config={"type": "cloud", "packages": {"apt": ["curl"], "go": ["a.b/c@v1.0.0"]}})
    assert env.config["packages"]["apt"] == ["curl"] and env.build_status == "building"


def test_an_environment_with_packages_is_building_until_its_build_finishes(
    workspace, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        env = create(workspace, config={"type": "cloud", "packages": {"pip": ["tiny-package==1.0"]}})
    out = services.environment_wire(env)
    assert out["build_status"] == "building" and out["sandbox_unsafe"] is False
    assert len(callbacks) == 1  # the build task is enqueued after commit
    plain = services.environment_wire(create(workspace, name="plain"))
    assert plain["build_status"] == "ready"
