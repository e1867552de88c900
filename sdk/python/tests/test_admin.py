"""Warm pool management (admin), runtimes and profiles."""

import time

import pytest

import llmsafespace
from llmsafespace import WarmPool


def test_runtimes(stack, user):
    runtimes = llmsafespace.list_runtimes(api_key=user.key,
                                          api_url=stack.api_url)
    by_name = {r.name: r for r in runtimes}
    assert "python:3.11" in by_name
    py = by_name["python:3.11"]
    assert py.language == "python" and "pip" in py.package_managers
    assert "standard" in py.security_levels
    assert user.runtime("python").name == "python:3.11"
    with pytest.raises(llmsafespace.NotFoundError):
        user.runtime("cobol")


def test_profiles(user):
    profiles = user.profiles()
    assert profiles, "the stack ships profiles"
    first = profiles[0]
    assert user.profile(first.name).name == first.name
    with pytest.raises(llmsafespace.NotFoundError):
        user.profile("no-such-profile")


def test_manifest_pool_is_read_only(admin):
    pools = {p.name: p for p in WarmPool.list(client=admin)}
    assert "python" in pools
    py = pools["python"]
    assert py.source == "manifest" and py.runtime == "python:3.11"
    with pytest.raises(llmsafespace.ConflictError):
        py.update(max_size=py.max_size + 1)
    with pytest.raises(llmsafespace.ConflictError):
        py.delete()


def test_warm_pool_lifecycle(admin, unique):
    name = "sdk-" + unique
    pool = WarmPool.create(name, "python:3.11", min_size=1, max_size=2,
                           preload_packages=["json"],
                           auto_scaling={"enabled": False}, client=admin)
    try:
        assert pool.id.startswith("wp-") and pool.name == name
        assert (pool.min_size, pool.max_size) == (1, 2)
        assert pool.source == "api" and pool.preload_packages == ["json"]

        assert name in [p.name for p in WarmPool.list(client=admin)]
        assert WarmPool.get(name, client=admin).id == pool.id
        assert WarmPool.get(pool.id, client=admin).name == name

        pool.update(max_size=3)
        assert pool.max_size == 3 and pool.min_size == 1
        assert WarmPool.get(pool.id, client=admin).max_size == 3

        with pytest.raises(llmsafespace.ValidationError):
            pool.update(min_size=5, max_size=2)

        # the controller starts the pool's sandbox (bounded wait)
        st = pool.status()
        for _ in range(300):
            if st.available_pods >= 1:
                break
            time.sleep(0.5)
            st = pool.status()
        assert st.available_pods >= 1, st
    finally:
        pool.delete()
    with pytest.raises(llmsafespace.NotFoundError):
        WarmPool.get(pool.id, client=admin)
    pool.delete()  # already gone: fine


def test_duplicate_pool_name_conflicts(admin, unique):
    pool = admin.create_warm_pool("sdk-dup-" + unique, "python:3.11",
                                  min_size=0, max_size=1)
    try:
        with pytest.raises(llmsafespace.ConflictError):
            admin.create_warm_pool("sdk-dup-" + unique, "python:3.11",
                                   min_size=0, max_size=1)
    finally:
        pool.delete()


def test_bad_pool_is_a_validation_error(admin, unique):
    with pytest.raises(llmsafespace.ValidationError):
        WarmPool.create("sdk-bad-" + unique, "cobol:85", client=admin)
