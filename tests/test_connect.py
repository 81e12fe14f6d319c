"""The token a client sends to a cluster that requires one, decided before Ray is asked (no Ray
started here; a real head with token authentication is tests/test_ray_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import UsageError


def test_the_token_is_found_where_ray_looks_in_rays_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchestrator.run.connect import token_source

    monkeypatch.setenv("HOME", str(tmp_path))
    token = tmp_path / "t"
    token.write_text("abc\n")
    assert token_source({}) is None
    assert token_source({"RAY_AUTH_TOKEN_PATH": str(token)}) == f"RAY_AUTH_TOKEN_PATH ({token})"
    assert token_source({"RAY_AUTH_TOKEN": "x", "RAY_AUTH_TOKEN_PATH": str(token)}) == "RAY_AUTH_TOKEN"
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("abc")
    assert token_source({}) == str(tmp_path / ".ray" / "auth_token")
    # Ray aborts the process on a token file it cannot read or that is empty: said as bad input here
    with pytest.raises(UsageError, match="RAY_AUTH_TOKEN_PATH '/no/such/file': cannot read the token file"):
        token_source({"RAY_AUTH_TOKEN_PATH": "/no/such/file"})
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(UsageError, match="the token file is empty"):
        token_source({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


def test_a_given_token_is_sent_and_token_mode_without_one_is_bad_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestrator.run.connect import use_given_token

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    env = {"RAY_AUTH_TOKEN": "abc"}
    use_given_token(env)
    assert env["RAY_AUTH_MODE"] == "token"  # Ray's client would not send it with the mode unset
    env = {"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_MODE": "disabled"}
    use_given_token(env)
    assert env["RAY_AUTH_MODE"] == "disabled"  # an explicit mode is the user's
    env = {}
    use_given_token(env)
    assert "RAY_AUTH_MODE" not in env
    with pytest.raises(UsageError, match="RAY_AUTH_MODE=token but no authentication token was found"):
        use_given_token({"RAY_AUTH_MODE": "token"})
