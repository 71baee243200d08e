# -*- test-case-name: tests.test_routing_params -*-
"""
Tests for L{llmproxy.routing.params}.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from llmproxy.errors import InvalidRequest
from llmproxy.routing.params import URI_PARAMS, validate_params

_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")


class ValidateParamsTests(SynchronousTestCase):
    """
    Tests for L{validate_params}.
    """

    def assertRejected(self, name: str, raw: str) -> InvalidRequest:
        """
        Assert that C{name=raw} is rejected in strict mode.
        """
        error: InvalidRequest = self.assertRaises(InvalidRequest, validate_params, [(name, raw)])
        self.assertEqual(error.status, 400)
        self.assertEqual(error.param, name)
        self.assertEqual(error.code, "invalid_uri_parameter")
        self.assertIn(repr(name), error.message)
        return error

    def test_typedValuesInOrder(self) -> None:
        """
        Values are converted to their types and keep the given order.
        """
        result = validate_params(
            [
                ("verbosity", "low"),
                ("temperature", "0.5"),
                ("top_k", "40"),
                ("max_tokens", "256"),
                ("top_p", "1"),
                ("reasoning_effort", "xhigh"),
            ]
        )
        self.assertEqual(
            list(result.values.items()),
            [
                ("verbosity", "low"),
                ("temperature", 0.5),
                ("top_k", 40),
                ("max_tokens", 256),
                ("top_p", 1.0),
                ("reasoning_effort", "xhigh"),
            ],
        )
        self.assertIs(type(result.values["top_k"]), int)
        self.assertIs(type(result.values["top_p"]), float)
        self.assertEqual(result.warnings, ())

    def test_empty(self) -> None:
        """
        No parameters give no values.
        """
        self.assertEqual(dict(validate_params([]).values), {})

    def test_floatForms(self) -> None:
        """
        Decimal and exponent forms are accepted; bounds are inclusive.
        """
        for raw, expected in [("0", 0.0), ("2", 2.0), (".5", 0.5), ("1e-1", 0.1), ("+1.", 1.0)]:
            result = validate_params([("temperature", raw)])
            self.assertEqual(result.values["temperature"], expected)

    def test_negativeZeroNormalised(self) -> None:
        """
        C{-0} is accepted as plain zero.
        """
        value = validate_params([("top_p", "-0")]).values["top_p"]
        self.assertEqual(math.copysign(1.0, value), 1.0)  # type: ignore[arg-type]

    def test_temperatureOutOfRange(self) -> None:
        """
        The message names the parameter, the range and the bad value.
        """
        error = self.assertRejected("temperature", "3.5")
        self.assertEqual(
            error.message,
            "URI parameter 'temperature' must be a number from 0 to 2, got '3.5'",
        )

    def test_badFloats(self) -> None:
        """
        NaN, infinities, overflow and non-decimal forms are rejected.
        """
        for raw in ["nan", "NaN", "inf", "-inf", "1e999", "", "0x1", "1_0", " 1", "1.5.1", "-0.1"]:
            self.assertRejected("temperature", raw)
        self.assertRejected("top_p", "1.01")

    def test_intForms(self) -> None:
        """
        Integers accept plain digits only.
        """
        self.assertEqual(validate_params([("top_k", "5")]).values["top_k"], 5)
        self.assertEqual(validate_params([("max_tokens", "1")]).values["max_tokens"], 1)
        for raw in ["5.5", "5.0", "true", "1e3", "0", "-1", " 5", "\u0665", "", "9" * 5000]:
            self.assertRejected("top_k", raw)

    def test_intMessage(self) -> None:
        """
        The integer message says what is allowed.
        """
        error = self.assertRejected("max_tokens", "0")
        self.assertEqual(
            error.message, "URI parameter 'max_tokens' must be an integer >= 1, got '0'"
        )

    def test_enums(self) -> None:
        """
        Every documented enum value is accepted, including C{minimal} and
        C{none}; others are rejected with the list of choices.
        """
        for effort in _EFFORTS:
            result = validate_params([("reasoning_effort", effort)])
            self.assertEqual(result.values["reasoning_effort"], effort)
        for verbosity in ("low", "medium", "high"):
            result = validate_params([("verbosity", verbosity)])
            self.assertEqual(result.values["verbosity"], verbosity)
        error = self.assertRejected("verbosity", "max")
        self.assertIn("low, medium, high", error.message)
        self.assertRejected("reasoning_effort", "HIGH")

    def test_unknownName(self) -> None:
        """
        An unknown name is rejected with the allowed names listed.
        """
        error = self.assertRejected("foo", "1")
        self.assertTrue(error.message.startswith("Unknown URI parameter 'foo'; allowed: "))
        for name in URI_PARAMS:
            self.assertIn(name, error.message)

    def test_duplicateName(self) -> None:
        """
        A name given twice is rejected in strict mode.
        """
        error = self.assertRaises(
            InvalidRequest, validate_params, [("top_p", "0.1"), ("top_p", "0.2")]
        )
        self.assertEqual(error.param, "top_p")

    def test_firstProblemReported(self) -> None:
        """
        Strict mode reports the first bad parameter.
        """
        error = self.assertRaises(
            InvalidRequest,
            validate_params,
            [("top_p", "0.1"), ("temperature", "9"), ("foo", "1")],
        )
        self.assertEqual(error.param, "temperature")

    def test_lenientDrops(self) -> None:
        """
        Lenient mode keeps the good parameters and warns once per dropped
        one.
        """
        result = validate_params(
            [
                ("temperature", "3.5"),
                ("top_p", "0.3"),
                ("foo", "1"),
                ("top_p", "0.9"),
                ("verbosity", "high"),
            ],
            lenient=True,
        )
        self.assertEqual(list(result.values.items()), [("top_p", 0.3), ("verbosity", "high")])
        self.assertEqual(len(result.warnings), 3)
        self.assertIn("'temperature'", result.warnings[0])
        self.assertIn("'3.5'", result.warnings[0])
        self.assertIn("'foo'", result.warnings[1])
        self.assertIn("'top_p'", result.warnings[2])

    def test_immutable(self) -> None:
        """
        The spec table and the result values cannot be changed.
        """

        def mutateTable() -> None:
            URI_PARAMS["seed"] = URI_PARAMS["top_k"]  # type: ignore[index]

        def mutateValues() -> None:
            result.values["top_k"] = 1  # type: ignore[index]

        result = validate_params([("top_k", "2")])
        self.assertRaises(TypeError, mutateTable)
        self.assertRaises(TypeError, mutateValues)

    @given(st.floats(min_value=0.0, max_value=2.0))
    def test_temperatureInRange(self, value: float) -> None:
        """
        Every float from 0 to 2 round-trips through its text form.
        """
        result = validate_params([("temperature", repr(value))])
        self.assertEqual(result.values["temperature"], value)

    @given(st.floats(allow_nan=True).filter(lambda v: not 0.0 <= v <= 1.0))
    def test_topPOutOfRange(self, value: float) -> None:
        """
        Every float outside 0..1 (including NaN and infinities) is rejected.
        """
        self.assertRaises(InvalidRequest, validate_params, [("top_p", repr(value))])

    @given(st.integers())
    def test_integers(self, value: int) -> None:
        """
        Integers are accepted exactly when they are at least 1.
        """
        if value >= 1:
            self.assertEqual(validate_params([("top_k", str(value))]).values["top_k"], value)
        else:
            self.assertRaises(InvalidRequest, validate_params, [("top_k", str(value))])

    @given(st.lists(st.tuples(st.sampled_from([*URI_PARAMS, "x"]) | st.text(), st.text())))
    def test_lenientNeverRaises(self, params: list[tuple[str, str]]) -> None:
        """
        Lenient mode never raises; every input pair is either kept or
        warned about.
        """
        result = validate_params(params, lenient=True)
        self.assertTrue(set(result.values) <= set(URI_PARAMS))
        self.assertEqual(len(result.values) + len(result.warnings), len(params))

    @given(st.lists(st.tuples(st.text(), st.text())))
    def test_strictOnlyInvalidRequest(self, params: list[tuple[str, str]]) -> None:
        """
        Strict mode either accepts everything or raises L{InvalidRequest}.
        """
        try:
            result = validate_params(params)
        except InvalidRequest:
            return
        self.assertEqual(len(result.values), len(params))
