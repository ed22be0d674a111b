from __future__ import annotations

from accel.registry.auth import Challenge, Credentials, TokenCache, parse_www_authenticate


def test_bearer_challenge() -> None:
    header = (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull,push",error="insufficient_scope"'
    )
    [challenge] = parse_www_authenticate(header)
    assert challenge.scheme == "bearer"
    assert challenge.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull,push",
        "error": "insufficient_scope",
    }
    assert challenge.scopes == ["repository:library/busybox:pull,push"]


def test_several_challenges_and_case() -> None:
    header = 'Basic realm="Registry Realm", BEARER Realm="https://h/token", Service=reg'
    challenges = parse_www_authenticate(header)
    assert [c.scheme for c in challenges] == ["basic", "bearer"]
    assert challenges[0].params == {"realm": "Registry Realm"}
    assert challenges[1].params == {"realm": "https://h/token", "service": "reg"}


def test_quoted_strings_with_commas_and_escapes() -> None:
    [challenge] = parse_www_authenticate(r'Bearer realm="a, b \"c\"", scope="x y"')
    assert challenge.params["realm"] == 'a, b "c"'
    assert challenge.scopes == ["x", "y"]


def test_unquoted_values_with_colons_and_token68() -> None:
    challenges = parse_www_authenticate("Negotiate abc==, Bearer scope=repository:a/b:pull, realm=http://x/t")
    assert challenges == [
        Challenge("negotiate"),
        Challenge("bearer", {"scope": "repository:a/b:pull", "realm": "http://x/t"}),
    ]


def test_empty_and_garbage() -> None:
    assert parse_www_authenticate("") == []
    assert parse_www_authenticate(",,, ") == []
    assert parse_www_authenticate("Basic") == [Challenge("basic")]


def test_credentials_hide_the_password() -> None:
    creds = Credentials("robot$acceld", "s3cr3t-value")
    for text in (repr(creds), str(creds), f"{creds}"):
        assert "s3cr3t-value" not in text and "robot$acceld" in text
    assert creds.basic_header() == "Basic cm9ib3QkYWNjZWxkOnMzY3IzdC12YWx1ZQ=="


def test_token_cache_expiry_and_scope_keys() -> None:
    now = [1000.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("h", ["repository:a:pull", "repository:b:pull"], "tok", expires_in=60)
    assert cache.get("h", ["repository:b:pull", "repository:a:pull"]) == "tok"  # order does not matter
    assert cache.get("h", ["repository:a:pull"]) is None
    assert cache.get("other", ["repository:a:pull", "repository:b:pull"]) is None
    now[0] += 49  # renewed 10 s before expiry
    assert cache.get("h", ["repository:a:pull", "repository:b:pull"]) == "tok"
    now[0] += 2
    assert cache.get("h", ["repository:a:pull", "repository:b:pull"]) is None


def test_token_cache_short_lifetimes_and_drop() -> None:
    now = [0.0]
    cache = TokenCache(clock=lambda: now[0])
    cache.put("h", ["s"], "tok", expires_in=10)  # margin larger than half the lifetime: keep half
    now[0] = 4.9
    assert cache.get("h", ["s"]) == "tok"
    now[0] = 5.1
    assert cache.get("h", ["s"]) is None
    cache.put("h", ["s"], "tok2", expires_in=300)
    cache.drop("h", ["s"])
    assert cache.get("h", ["s"]) is None
