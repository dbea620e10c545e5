"""The runtime's environment: the worker's minus the control plane (pure function)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from celery_selfheal.core.runtime_env import CELERY_CONTROL_VARS, PROTOCOL_VARS, without_control_plane

BROKER = "redis://:s3cret@127.0.0.1:6379/0"
STORE = "sqlite:////var/lib/selfheal/selfheal.db"


def test_control_plane_names_and_values_are_dropped() -> None:
    env = {"PATH": "/usr/bin", "HOME": "/root", "SELFHEAL_BROKER_URL": BROKER, "SELFHEAL_STORE_URL": STORE,
           "SELFHEAL_STATE_DIR": "/var/lib/selfheal", "SELFHEAL_WEB_TOKEN": "t0k", "SELFHEAL_JOB_ID": "j",
           "SELFHEAL_ATTEMPT_MARKER": "m", "CELERY_BROKER_URL": "amqp://u:p@h//", "REDIS_URL": BROKER,
           "MY_DSN": f"x={BROKER}", "BROKER": "filesystem://"}
    out = without_control_plane(env, (BROKER, STORE, "filesystem://"))
    assert out == {"PATH": "/usr/bin", "HOME": "/root", "SELFHEAL_JOB_ID": "j", "SELFHEAL_ATTEMPT_MARKER": "m",
                   "BROKER": "filesystem://"}


names = st.one_of(st.sampled_from(sorted(PROTOCOL_VARS | CELERY_CONTROL_VARS | {"SELFHEAL_STORE_URL", "PATH"})),
                  st.text(st.sampled_from("ABCDEFGHIJ_"), min_size=1, max_size=12),
                  st.text(st.sampled_from("ABC_"), max_size=6).map(lambda s: "SELFHEAL_" + s))
values = st.one_of(st.text(max_size=20), st.just(BROKER), st.text(max_size=5).map(lambda s: s + STORE))


@given(st.dictionaries(names, values, max_size=12))
def test_no_control_plane_survives_and_the_rest_is_kept(env: dict[str, str]) -> None:
    out = without_control_plane(env, (BROKER, STORE))
    for name, value in out.items():
        assert not name.startswith("SELFHEAL_") or name in PROTOCOL_VARS
        assert name not in CELERY_CONTROL_VARS and BROKER not in value and STORE not in value
    for name, value in env.items():
        if (not name.startswith("SELFHEAL_") or name in PROTOCOL_VARS) and name not in CELERY_CONTROL_VARS \
                and BROKER not in value and STORE not in value:
            assert out[name] == value
