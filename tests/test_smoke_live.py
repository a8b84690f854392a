import anthropic
import pytest


def test_live_server_rejects_a_bad_key_with_the_spec_error_shape(live):
    client = live.client()
    client.api_key = "sk-galley-wrong"
    bad = anthropic.Anthropic(base_url=live.base_url, api_key="sk-galley-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        bad.beta.agents.list()
    assert info.value.status_code == 401
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] == "authentication_error"
    assert info.value.body["request_id"].startswith("req_")
