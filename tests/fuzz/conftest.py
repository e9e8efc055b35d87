"""Hypothesis profiles for the fuzz and stateful tests: "ci" (the default, bounded and
derandomized so `make test` neither drags nor flakes on stored examples) and "long"
(`make fuzz`, passed as `--hypothesis-profile=long`)."""

from hypothesis import HealthCheck, Phase, settings

settings.register_profile(
    "ci",
    max_examples=15,
    stateful_step_count=30,
    derandomize=True,
    database=None,
    # Shrinking a sequence of server calls can take minutes, beyond pytest's timeout:
    # CI reports the failing sequence as found; `make fuzz` shrinks it.
    phases=[Phase.explicit, Phase.generate],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=300,
    stateful_step_count=60,
    database=None,
    deadline=None,  # the calls carry their own timeouts: a hang fails as DEADLINE_EXCEEDED
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci")


def scaled(factor: int) -> settings:
    """The current profile's settings with `factor` times its examples: for tests whose
    examples take a millisecond, not a server's lifetime."""
    return settings(max_examples=factor * settings().max_examples)
