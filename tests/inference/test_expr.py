"""The `retrieve --where` expression language: parsing, errors, scoring, and a fuzz test."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celebhpo.errors import ExpressionError
from celebhpo.inference.expr import (
    MAX_DEPTH,
    MAX_ENUMERATED,
    ExpressionParseError,
    parse_expression,
)
from celebhpo.inference.expr_tree import enumerated

# CelebA's 40 names in file order (kept here so this test needs nothing but the parser).
ATTRS = [
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
]
IDX = {a: i for i, a in enumerate(ATTRS)}


def truth(expr: str, true: set[str]) -> bool:
    row = np.zeros((1, 40), dtype=bool)
    for name in true:
        row[0, IDX[name]] = True
    return bool(parse_expression(expr, ATTRS).holds(row)[0])


# -- parsing -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "canonical", "used"),
    [
        ("Eyeglasses and not Male", "Eyeglasses and not Male", ("Eyeglasses", "Male")),
        ("(Blond_Hair or Gray_Hair) and Smiling", "(Blond_Hair or Gray_Hair) and Smiling",
         ("Blond_Hair", "Gray_Hair", "Smiling")),
        ("wearing hat", "Wearing_Hat", ("Wearing_Hat",)),
        ("5 o clock shadow", "5_o_Clock_Shadow", ("5_o_Clock_Shadow",)),
        ("5 o'clock shadow", "5_o_Clock_Shadow", ("5_o_Clock_Shadow",)),
        ("MOUTH slightly_open AND NOT no beard", "Mouth_Slightly_Open and not No_Beard",
         ("Mouth_Slightly_Open", "No_Beard")),
        ("not not Male", "not not Male", ("Male",)),
        ("((Bald))", "Bald", ("Bald",)),
        ("Male and Male", "Male and Male", ("Male",)),
    ],
)
def test_parses_names_in_any_spelling(expr, canonical, used):
    parsed = parse_expression(expr, ATTRS)
    assert str(parsed) == canonical
    assert parsed.attributes == used
    # the canonical form parses back to the same tree
    assert parse_expression(str(parsed), ATTRS).root == parsed.root


def test_longest_name_wins_over_its_prefix():
    # "Wearing" alone is no name, "Wearing_Hat" is; "Big Nose" must not stop at "Big"
    assert str(parse_expression("big nose or wearing hat", ATTRS)) == "Big_Nose or Wearing_Hat"


def test_precedence_not_over_and_over_or():
    expr = "Bald or Bangs and not Male"  # = Bald or (Bangs and (not Male))
    for true in itertools.chain.from_iterable(
        itertools.combinations(["Bald", "Bangs", "Male"], n) for n in range(4)
    ):
        t = set(true)
        expected = "Bald" in t or ("Bangs" in t and "Male" not in t)
        assert truth(expr, t) == expected, t
    assert truth("not Bald and Bangs", {"Bangs"}) is True
    assert truth("not (Bald and Bangs)", {"Bangs"}) is True
    assert truth("not Bald and Bangs", set()) is False
    # parentheses override
    assert truth("(Bald or Bangs) and not Male", {"Bald", "Male"}) is False
    assert truth("Bald or Bangs and not Male", {"Bald", "Male"}) is True


def test_score_is_probability_under_independence():
    p = np.full((1, 40), 0.5)
    p[0, IDX["Eyeglasses"]] = 0.8
    p[0, IDX["Male"]] = 0.3
    p[0, IDX["Smiling"]] = 0.6

    def score(e: str) -> float:
        return float(parse_expression(e, ATTRS).score(p)[0])

    assert score("Eyeglasses") == pytest.approx(0.8)
    assert score("not Male") == pytest.approx(0.7)
    assert score("Eyeglasses and not Male") == pytest.approx(0.8 * 0.7)
    assert score("Eyeglasses or Male") == pytest.approx(0.8 + 0.3 - 0.8 * 0.3)
    assert score("Eyeglasses or Male or Smiling") == pytest.approx(1 - 0.2 * 0.7 * 0.4)
    assert score("(Eyeglasses or Male) and Smiling") == pytest.approx((0.8 + 0.3 - 0.24) * 0.6)


def brute_force(expr: str, probs: np.ndarray) -> np.ndarray:
    """P(expr) by enumerating every truth value of every distinct attribute it names."""
    parsed = parse_expression(expr, ATTRS)
    idx = [IDX[a] for a in parsed.attributes]
    total = np.zeros(len(probs))
    for values in itertools.product((False, True), repeat=len(idx)):
        row = np.zeros((1, 40), dtype=bool)
        row[0, idx] = values
        if parsed.holds(row)[0]:
            total += np.prod(np.where(values, probs[:, idx], 1.0 - probs[:, idx]), axis=1)
    return total


def test_a_repeated_attribute_is_one_event():
    probs = np.random.default_rng(0).random((6, 40))
    male = probs[:, IDX["Male"]]

    def score(e: str) -> np.ndarray:
        return parse_expression(e, ATTRS).score(probs)

    np.testing.assert_allclose(score("Male or not Male"), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(score("Male and Male"), male, rtol=0, atol=1e-12)
    np.testing.assert_allclose(score("Male and not Male"), 0.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(score("not (Male or Male or Male)"), 1 - male, rtol=0, atol=1e-12)
    np.testing.assert_allclose(score("(Male or Male) and (Male or not Male)"), male, rtol=0,
                               atol=1e-12)


def test_two_shared_attributes_against_hand_computed_values():
    p = np.full((2, 40), 0.5)
    p[:, IDX["Male"]] = [0.3, 0.9]
    p[:, IDX["Smiling"]] = [0.6, 0.2]
    m, s = p[:, IDX["Male"]], p[:, IDX["Smiling"]]
    xor = "(Male or Smiling) and not (Male and Smiling)"
    np.testing.assert_allclose(parse_expression(xor, ATTRS).score(p), m * (1 - s) + (1 - m) * s)
    # 0.3*0.4 + 0.7*0.6 = 0.54 and 0.9*0.8 + 0.1*0.2 = 0.74, written out
    np.testing.assert_allclose(parse_expression(xor, ATTRS).score(p), [0.54, 0.74])
    same = "(Male and Smiling) or (not Male and not Smiling)"
    np.testing.assert_allclose(parse_expression(same, ATTRS).score(p), [0.46, 0.26])
    # absorption: Male or (Male and Smiling) is Male, whatever Smiling is
    np.testing.assert_allclose(parse_expression("Male or (Male and Smiling)", ATTRS).score(p),
                               m)


def random_expression(rng: np.random.Generator, names: list[str], depth: int) -> str:
    """An and/or/not tree over `names` (repeats likely), `depth` levels at most."""
    if depth == 0 or rng.random() < 0.25:
        leaf = str(rng.choice(names))
        return f"not {leaf}" if rng.random() < 0.3 else leaf
    op = " and " if rng.random() < 0.5 else " or "
    parts = [random_expression(rng, names, depth - 1) for _ in range(rng.integers(2, 4))]
    text = "(" + op.join(parts) + ")"
    return f"not {text}" if rng.random() < 0.2 else text


def test_random_three_attribute_expressions_match_brute_force():
    rng = np.random.default_rng(3)
    probs = rng.random((5, 40))
    names = ["Male", "Smiling", "Eyeglasses"]
    repeated = 0
    for _ in range(200):
        expr = random_expression(rng, names, depth=4)
        parsed = parse_expression(expr, ATTRS)
        repeated += len(parsed.attributes) < sum(expr.count(n) for n in names)
        np.testing.assert_allclose(parsed.score(probs), brute_force(expr, probs), rtol=0,
                                   atol=1e-12, err_msg=expr)
    assert repeated > 100  # the point: most of them name an attribute more than once


def test_too_many_shared_attributes_is_refused_in_one_line():
    sixteen, seventeen = ATTRS[:MAX_ENUMERATED], ATTRS[:MAX_ENUMERATED + 1]
    # every attribute in both halves: all of them shared by the top-level "or"
    ok = f"({' and '.join(sixteen)}) or ({' or '.join(sixteen)})"
    assert enumerated(parse_expression(ok, ATTRS).root) == MAX_ENUMERATED  # accepted
    five = ATTRS[:5]  # the same shape, small enough to score here: it is "any of them"
    probs = np.random.default_rng(4).random((2, 40))
    np.testing.assert_allclose(
        parse_expression(f"({' and '.join(five)}) or ({' or '.join(five)})", ATTRS).score(probs),
        1 - np.prod(1 - probs[:, :5], axis=1), rtol=0, atol=1e-12)
    bad = f"({' and '.join(seventeen)}) or ({' or '.join(seventeen)})"
    with pytest.raises(ExpressionError) as info:
        parse_expression(bad, ATTRS)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f'expression "{bad}"')
    assert f"enumerates {MAX_ENUMERATED + 1} attributes named more than once" in message
    # repeats joined lower in the tree are enumerated there, one group at a time
    pairs = " and ".join(f"({a} or not {a})" for a in ATTRS)
    np.testing.assert_allclose(parse_expression(pairs, ATTRS).score(probs), 1.0, rtol=0,
                               atol=1e-12)


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("expr", "position", "words"),
    [
        ("Eyeglasses and", 15, ["expected an attribute name", "end of the expression"]),
        ("Eyeglasses and and Male", 16, ['found "and"']),
        ("Eyeglasses Male", 12, ['expected "and" or "or"', 'found "Male"']),
        ("(Male or Bald", 14, ['expected ")"', 'the "(" at position 1']),
        ("Male)", 5, ['found ")"']),
        ("()", 2, ['found ")"']),
        ("Male & Bald", 6, ["unexpected character '&'"]),
        ("not", 4, ["end of the expression"]),
    ],
)
def test_malformed_points_at_the_position(expr, position, words):
    with pytest.raises(ExpressionParseError) as info:
        parse_expression(expr, ATTRS)
    message = str(info.value)
    assert f"at position {position}" in message
    assert "\n" not in message and f'"{expr}"' in message
    for w in words:
        assert w in message
    # the caret sits under the same (1-based) position
    expr_line, caret_line = info.value.pointer().splitlines()
    assert caret_line.index("^") - 2 == position - 1 and expr_line == f"  {expr}"


@pytest.mark.parametrize(
    ("expr", "unknown", "suggested"),
    [
        ("Eyeglases and not Male", "Eyeglases", ["Eyeglasses"]),
        ("Male and blond hiar", "blond hiar", ["Blond_Hair"]),
        ("wearing hatt", "wearing hatt", ["Wearing_Hat"]),
        ("hat or Male", "hat", ["Wearing_Hat"]),
        ("Big Nse Smiling", "Big Nse", ["Big_Nose"]),
    ],
)
def test_unknown_name_suggests_the_nearest(expr, unknown, suggested):
    with pytest.raises(ExpressionError) as info:
        parse_expression(expr, ATTRS)
    message = str(info.value)
    assert f'unknown attribute "{unknown}"' in message and "did you mean" in message
    for s in suggested:
        assert s in message


def test_unknown_name_with_nothing_close_lists_the_names():
    with pytest.raises(ExpressionError, match="known attributes: 5_o_Clock_Shadow, "):
        parse_expression("zzzqqq", ATTRS)


@pytest.mark.parametrize("expr", ["", "   ", "\t"])
def test_empty_expression(expr):
    with pytest.raises(ExpressionError, match="empty expression"):
        parse_expression(expr, ATTRS)


def test_nesting_is_bounded():
    ok = "(" * MAX_DEPTH + "Male" + ")" * MAX_DEPTH
    assert str(parse_expression(ok, ATTRS)) == "Male"
    with pytest.raises(ExpressionError, match="nested more than"):
        parse_expression("not " * (MAX_DEPTH + 1) + "Male", ATTRS)
    with pytest.raises(ExpressionError, match="nested more than"):
        parse_expression("(" * 5000 + "Male" + ")" * 5000, ATTRS)
    # long flat chains are fine: they add no depth
    chain = " and ".join(["Male"] * 3000)
    assert parse_expression(chain, ATTRS).score(np.full((2, 40), 1.0)).tolist() == [1.0, 1.0]


# -- fuzz: any token string parses or raises ExpressionError with a message -------------------
tokens = st.sampled_from(
    ["and", "or", "not", "AND", "Not", "(", ")", "((", "))", "Male", "male", "Eyeglasses",
     "wearing", "hat", "Wearing_Hat", "5", "o", "clock", "shadow", "o'clock", "big", "nose",
     "Blond_Hair", "no_beard", "_", "-", "'", "&", "|", "!", "~", "$", "eyeglases", "x", "1"]
) | st.text(max_size=4)
separators = st.sampled_from([" ", "  ", "", "\t", "_"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(tokens, separators), max_size=12))
def test_fuzz_parses_or_raises_expression_error(parts):
    expr = "".join(t + s for t, s in parts)
    try:
        parsed = parse_expression(expr, ATTRS)
    except ExpressionError as e:
        message = str(e)
        assert message and "\n" not in message
        assert ("at position" in message or "empty expression" in message), message
        if isinstance(e, ExpressionParseError):
            assert 0 <= e.position <= len(expr)
        return
    # parsed: its canonical form round-trips, scores are the exact probabilities, and on 0/1
    # probabilities the score is exactly the truth value
    assert parse_expression(str(parsed), ATTRS).root == parsed.root
    rng = np.random.default_rng(len(expr))
    probs = rng.random((8, 40))
    score = parsed.score(probs)
    assert score.shape == (8,) and np.all((score >= -1e-12) & (score <= 1 + 1e-12))
    np.testing.assert_allclose(score, brute_force(expr, probs), rtol=0, atol=1e-12)
    bools = rng.random((8, 40)) < 0.5
    assert np.array_equal(parsed.score(bools.astype(float)) == 1.0, parsed.holds(bools))
