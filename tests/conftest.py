pytest_plugins = ["tests.fixtures.ci", "tests.fixtures.services", "tests.fixtures.lethe", "tests.fixtures.events"]
