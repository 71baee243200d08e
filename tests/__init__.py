"""
llmproxy's tests.

Importing this package loads the one Hypothesis profile every property test
runs under (a test that needs more or fewer examples says so with its own
C{@settings(max_examples=...)}, nothing else):

 - C{deadline=None}: a per-example time limit only measures how busy the
   machine is (C{trial -j2} on shared cores), never llmproxy;
 - the C{too_slow} and C{filter_too_much} health checks are off for the same
   reason: under load, generating data is slow and filtering gives up
   sooner, and neither says anything about the code under test (the other
   health checks, about strategies themselves, stay on);
 - 100 examples, Hypothesis' default;
 - one example database, in the checkout's C{.hypothesis/} (C{trial -j2}
   runs each worker in a C{_trial_temp/N} that the next run wipes), so a
   failure found once is replayed first by every later run;
 - in CI (C{CI} set in the environment) the examples are derandomized and no
   example database is kept: a red CI run is reproducible
   (C{HYPOTHESIS_PROFILE=llmproxy-ci trial tests}) and cannot be caused by a
   new random draw unrelated to the change under test; local runs stay
   random, so they keep exploring.

C{HYPOTHESIS_PROFILE} selects a profile explicitly.
"""

import os

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         ".hypothesis", "examples")

settings.register_profile(
    "llmproxy",
    database=DirectoryBasedExampleDatabase(_EXAMPLES),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    max_examples=100,
)
settings.register_profile(
    "llmproxy-ci", settings.get_profile("llmproxy"), derandomize=True, database=None,
    print_blob=True,
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("llmproxy-ci" if os.environ.get("CI") else "llmproxy")
)
