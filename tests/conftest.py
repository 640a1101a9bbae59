from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.fixtures.ci", "tests.fixtures.services", "tests.fixtures.lethe", "tests.fixtures.events"]

# Property tests assert behaviour, never speed (speed lives in `make bench`): a per-example deadline only
# turns a busy CI machine into a red run. Tests that set their own settings keep them.
settings.register_profile("lethe", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("lethe")
