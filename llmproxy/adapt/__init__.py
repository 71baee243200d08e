"""
Per-target body shaping: pure steps applied to a routed body, once per
target, around its translation.

  - L{pipeline}: the step type (L{Step}: C{(body, Context) -> Shaped}), the
    ordered L{Pipeline} that runs them and consumes proxy-only fields;
  - L{steps}: the default pipeline of a configuration;
  - L{reasoning}: the first step, for OpenAI reasoning models.
"""
